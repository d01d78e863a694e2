"""The after-start audit of loaded objects (README "What actually ran", issue #25): whether a
launch can be audited and what the image's own MPI is (look.py, in the planner's look at the
image), and the rules the executor evaluates over what the app loaded (rules.py). The executor's
side is csrc/audit.c, csrc/auditfind.c and the audit library csrc/audit/shim_audit.c.

Non-goals: auditing a static binary, a musl image or an emulated foreign-architecture app (no
glibc loader runs LD_AUDIT there: the plan says so instead), and telling which transport a
library picked at run time beyond the objects it mapped."""
