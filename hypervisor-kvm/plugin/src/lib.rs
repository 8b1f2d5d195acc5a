//! The kvm hypervisor plugin as a `.so`. The logic lives in `hypervisor_kvm::plugin`.
plugin_api::export_plugin!(hypervisor_kvm::plugin::KvmPlugin);
