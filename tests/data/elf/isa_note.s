/* A hand-written GNU property note: x86 ISA needed = baseline | v2 | v3 | v4. */
	.section .note.gnu.property, "a"
	.p2align 3
	.long 4                 /* n_namesz */
	.long 16                /* n_descsz */
	.long 5                 /* NT_GNU_PROPERTY_TYPE_0 */
	.asciz "GNU"
	.long 0xc0008002        /* GNU_PROPERTY_X86_ISA_1_NEEDED */
	.long 4                 /* pr_datasz */
	.long 0xf               /* baseline, v2, v3, v4 */
	.p2align 3
	.text
	.globl _start
_start:
	ret
