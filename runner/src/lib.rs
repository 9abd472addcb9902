//! wharf-runner: the node agent. It pulls images from a registry, unpacks
//! their layers into a content-addressed store, and runs containers with
//! namespace and cgroup isolation on an overlayfs rootfs.
//!
//! Work in progress: the modules below are the building blocks of the
//! runner core (see ARCHITECTURE.md for what exists and what is next).

pub mod api;
pub mod bundle;
pub mod cgroups;
pub mod cli;
pub mod daemon;
pub mod image;
pub mod internal;
pub mod logs;
pub mod runtime;
pub mod shim;
