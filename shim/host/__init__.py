"""Host facts: what this node has (GPUs, RDMA devices, CPU, emulators, hypervisor, the CPUs a job
may use), read through a host root so tests can present a simulated /sys, /dev and /proc."""
