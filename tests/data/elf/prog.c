int main_fn(void);
int main(void) { return main_fn() == 3 ? 0 : 1; }
