//! Link options for the kernel programs (bpf-linker's). By default
//! bpf-linker asks LLVM to expand only `memcpy` inline (in order, for old
//! JITs' pattern matching) and leaves every `memset`, `memmove` and
//! `memcmp` a call of a byte-at-a-time loop: zeroing a 16-byte address cost
//! more than a map lookup. Without that option LLVM expands all four into
//! word moves.
fn main() {
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    // Global BPF functions: the verifier checks each once, on its own.
    println!(
        "cargo:rustc-link-arg=--export=gate_step,gate_cookie,gate_tracked,gate_new_syn,gate_pick_up,gate_table_find,gate_table_insert"
    );
}
