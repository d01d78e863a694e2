"""The container as the launch record describes it, built purely from the command line's
options, the site and the image: its binds (binds.py), isolation (contain.py), environment rules
(environment.py) and the user's identity inside (identity.py). Nothing here mounts or runs:
the C executor does, from the record (shim/launch/ hands it over)."""
