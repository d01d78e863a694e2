/* libplain.so.1: no version script, no search path of its own; needs libdep.so.1. */
int dep_one(void);
int plain_fn(void) { return dep_one(); }
