/* libmain.so.1: versioned (main.map), needs DEP_2.0 of libdep.so.1. */
int dep_two(void);
static int hidden_helper(void) { return 1; }
int main_old(void) { return hidden_helper(); }
int main_fn(void) { return dep_two() + 1; }
