const char *zlibVersion(void);
int main(void) { return zlibVersion() ? 0 : 1; }
