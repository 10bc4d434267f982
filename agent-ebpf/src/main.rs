//! agentd's kernel programs. Every program attributes the current task to an
//! identity through its cgroup (`attribution`), and only bound tasks are judged;
//! everything else returns at once.
#![no_std]
#![no_main]
// One atomic add (decide::atomic_add): the BPF target has no CAS, so core's
// atomics do not offer fetch_add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod attribution;
mod decide;
mod egress;
mod exec;
mod guard;
mod lineage;
mod maps;
mod unix;
mod vfs;
mod write;

pub(crate) const EPERM: i32 = 1;
pub(crate) const SIGKILL: u32 = 9;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
