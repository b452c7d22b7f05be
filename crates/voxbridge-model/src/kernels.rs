//! A process-wide registry of backend-specific kernel tables, keyed by the table's type.
//!
//! burn selects op implementations by backend type; voxbridge's generic code (the model, the
//! optimizer) cannot name a concrete backend. Whoever knows the concrete type — the engine, or a
//! backend's kernel crate — registers a table of function pointers for it once, and generic code
//! looks the table up by type (`InnerKernels<Flex>`, `Kernels<Autodiff<Wgpu>>`, …). A type with
//! nothing registered gets `None`, and the caller composes burn's ops instead.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

type Registry = RwLock<HashMap<TypeId, Box<dyn Any + Send + Sync>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers `table` for its type, replacing an earlier registration.
pub fn register<K: Copy + Send + Sync + 'static>(table: K) {
    registry().write().unwrap_or_else(|e| e.into_inner()).insert(TypeId::of::<K>(), Box::new(table));
}

/// The table registered for type `K`, if any.
pub fn lookup<K: Copy + Send + Sync + 'static>() -> Option<K> {
    let map = registry().read().unwrap_or_else(|e| e.into_inner());
    map.get(&TypeId::of::<K>()).and_then(|table| table.downcast_ref::<K>()).copied()
}

#[cfg(test)]
mod tests {
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Table(u8);
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Other(u8);

    #[test]
    fn tables_are_found_by_their_type_only() {
        assert_eq!(super::lookup::<Other>(), None);
        super::register(Table(1));
        super::register(Table(2));
        assert_eq!(super::lookup::<Table>(), Some(Table(2)));
        assert_eq!(super::lookup::<Other>(), None);
    }
}
