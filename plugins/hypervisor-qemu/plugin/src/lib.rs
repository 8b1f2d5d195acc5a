//! The QEMU hypervisor plugin as a `.so`. The logic lives in the `hypervisor-qemu` crate.
plugin_api::export_plugin!(hypervisor_qemu::QemuPlugin);
