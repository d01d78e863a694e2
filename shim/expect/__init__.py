"""What an image expects of the hardware it runs on (GPU runtime, RDMA stack, ISA level, declared
requirements), read cheaply from the mounted image root. shim.diagnose compares it with HostFacts.

    from shim.expect.scan import scan_image
    expect = scan_image("/path/to/rootfs", app="/usr/bin/app")
"""
