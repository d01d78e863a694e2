"""The launch pipeline: image -> site -> plan -> launch record. `check`, `--dry-run` and a launch
call it; the C executor (csrc/executor.c) runs what it writes."""
