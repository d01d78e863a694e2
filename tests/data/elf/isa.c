/* Built with -march=x86-64-vN -mneeded, so the linker records the ISA level it needs. */
double scale(const double *v, int n) { double s = 0; for (int i = 0; i < n; i++) s += v[i] * 3.0; return s; }
int main(void) { return 0; }
