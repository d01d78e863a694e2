int plain_fn(void);
int main(void) { return plain_fn() == 1 ? 0 : 1; }
