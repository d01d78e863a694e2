"""CDI (Container Device Interface) specs: read and validated (spec.py), gathered from the spec
directories (registry.py) and resolved into the container edits a request asks for. Pure over data:
nothing here runs a hook or touches the container; the planner applies what resolve() returns."""
