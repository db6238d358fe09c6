AddressSanitizer: allocation-size-too-big: qemu_loadvm_state_header>qemu_loadvm_state
