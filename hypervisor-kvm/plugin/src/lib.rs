//! The kvm hypervisor plugin as a `.so`. The logic lives in the `hypervisor-kvm` crate.
plugin_api::export_plugin!(hypervisor_kvm::KvmPlugin);
