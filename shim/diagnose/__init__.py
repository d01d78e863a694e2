"""Hardware diagnostics: what an image expects (shim.expect) against what the node has
(shim.host), as Diagnostics with stable codes; site policy can ignore, demote or escalate them.

    from shim.diagnose.hardware import hardware_diagnostics
    from shim.diagnose.policy import apply_policy
"""
