"""RDMA devices from /sys/class/infiniband and their device nodes under /dev/infiniband."""

from __future__ import annotations

import os
import re

from shim.host.model import RdmaDevice, RdmaFacts, RdmaPort
from shim.host.paths import DEV_DIR, SYSFS_CLASS

# Soft-RoCE (rxe) and soft-iWARP (siw): RDMA verbs emulated in the kernel over an Ethernet NIC.
SOFTWARE_DRIVERS = {"rxe": "rdma_rxe", "siw": "siw"}


def _read(path: str) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _driver(dev_dir: str, name: str) -> str:
    try:
        return os.path.basename(os.readlink(os.path.join(dev_dir, "device", "driver")))
    except OSError:
        pass
    # rxe and siw devices have no bus device, hence no driver link: name the kernel module.
    for prefix, driver in SOFTWARE_DRIVERS.items():
        if name.startswith(prefix):
            return driver
    return ""


def _is_software(dev_dir: str, name: str, driver: str) -> bool:
    if driver in SOFTWARE_DRIVERS.values() or name.startswith(tuple(SOFTWARE_DRIVERS)):
        return True
    # rdma_rxe (and siw) expose the Ethernet interface they run over in a `parent` file.
    return os.path.exists(os.path.join(dev_dir, "parent"))


def _port(port_dir: str, number: int) -> RdmaPort:
    state = _read(os.path.join(port_dir, "state")) or ""
    return RdmaPort(number=number, state=state.partition(": ")[2] or state,
                    link_layer=_read(os.path.join(port_dir, "link_layer")) or "")


def _device(class_dir: str, name: str) -> RdmaDevice:
    dev_dir = os.path.join(class_dir, name)
    ports_dir = os.path.join(dev_dir, "ports")
    ports = tuple(_port(os.path.join(ports_dir, p), int(p))
                  for p in sorted(_listdir(ports_dir), key=_natural) if p.isdigit())
    driver = _driver(dev_dir, name)
    return RdmaDevice(name=name, driver=driver, software=_is_software(dev_dir, name, driver), ports=ports)


def rdma_facts(host_root: str = "/") -> RdmaFacts:
    """The root's RDMA devices and /dev/infiniband nodes (as container paths); empty when none."""
    class_dir = os.path.join(host_root, SYSFS_CLASS)
    devices = tuple(_device(class_dir, n) for n in sorted(_listdir(class_dir), key=_natural))
    nodes = tuple("/" + DEV_DIR + "/" + n for n in sorted(_listdir(os.path.join(host_root, DEV_DIR)), key=_natural))
    return RdmaFacts(devices=devices, dev_nodes=nodes)
