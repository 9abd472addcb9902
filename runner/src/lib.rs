//! wharf-runner: the node agent. It pulls images from a registry, unpacks
//! their layers into a content-addressed store, and runs containers with
//! namespace and cgroup isolation on an overlayfs rootfs.
//!
//! `cli` talks to `daemon` over `api` (HTTP on a unix socket); the daemon
//! drives `image`, `bundle`, `cgroups` and starts `internal`'s `shim` and
//! `runtime` as processes of their own. See ARCHITECTURE.md.

pub mod api;
pub mod bundle;
pub mod cgroups;
pub mod cli;
pub mod daemon;
pub mod exec_main;
pub mod image;
pub mod internal;
pub mod logs;
pub mod runtime;
pub mod shim;
pub mod shim_io;
pub mod stdio;
pub mod volumes;
