"""Compatibility knowledge as data: each table a JSON file next to the one small module that
reads it (abi: glibc and MPI ABI families; gpus: NVIDIA driver files and forward compatibility;
rdma: verbs provider ABIs; codes: every diagnostic code; version: the one version parser). Below
every other layer but shim.model and shim.errors: nothing here imports the rest of shim."""
