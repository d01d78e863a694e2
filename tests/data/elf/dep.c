/* libdep.so.1: three symbols in three versions (dep.map). */
int dep_one(void) { return 1; }
int dep_two(void) { return 2; }
int dep_three(void) { return 3; }
