"""ELF facts and glibc loader emulation: which host or container libraries a program would load.

Importing this package is cheap: pyelftools is imported only inside the functions that parse a
file, so a run whose facts are all cached never pays for it.
"""
