# The CUDA emulator's fiber switch for x86-64 (System V): each emulated GPU thread is a fiber
# with a stack of its own; the scheduler (emu_core.cpp) and the fibers switch with these two
# routines. A switch saves the callee-saved registers, MXCSR and the x87 control word on the
# current stack, stores the stack pointer, loads the other one and restores the same set.
#
#   void emu_switch(void** save_sp, void* load_sp);
#   emu_fiber_start: the first return address of a new fiber; the fiber's Thread* is in r12 and
#   the entry function in r13 (set up by the stack image that emu_core.cpp writes).

        .text
        .globl  emu_switch
        .type   emu_switch, @function
emu_switch:
        .cfi_startproc
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        subq    $8, %rsp
        stmxcsr (%rsp)
        fnstcw  4(%rsp)
        movq    %rsp, (%rdi)
        movq    %rsi, %rsp
        ldmxcsr (%rsp)
        fldcw   4(%rsp)
        addq    $8, %rsp
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .cfi_endproc
        .size   emu_switch, .-emu_switch

        .globl  emu_fiber_start
        .type   emu_fiber_start, @function
emu_fiber_start:
        .cfi_startproc
        .cfi_undefined rip
        movq    %r12, %rdi
        callq   *%r13
        ud2
        .cfi_endproc
        .size   emu_fiber_start, .-emu_fiber_start

        .section .note.GNU-stack,"",@progbits
