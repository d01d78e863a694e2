"""The provenance record of a run: what ran (the image, to each object's digest), what the host
added to it (each injected library, to its sha256 and package), the decisions and diagnostics, and
the host facts that decided anything. The planner writes its part (facts.py) into the launch
record; the C executor adds the run's own and writes the file (csrc/provenance.c). compare.py
replays a record on this node (`shimrun check IMAGE --against RECORD`). docs/provenance.md has the
schema."""

SCHEMA = "shim-provenance/1"
