//! Core errors → Python exceptions. The classes live in `llmlb_fast.errors` (so they
//! can also subclass `ValueError` / `KeyError`); each core variant has its own class.

use llmlb_core::CoreError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS_MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class_name(err: &CoreError) -> &'static str {
    match err {
        CoreError::UnknownNode(_) => "UnknownNodeError",
        CoreError::InvalidInput(_) => "InvalidInputError",
        CoreError::InvalidConfig(_) => "ConfigError",
        CoreError::UnknownModel(_) => "UnknownModelError",
        CoreError::NoAvailableNode(_) => "NoAvailableNodeError",
        CoreError::DuplicateRequest(_) => "DuplicateRequestError",
        CoreError::TableFull(_) => "TableFullError",
    }
}

pub fn to_py(err: CoreError) -> PyErr {
    Python::attach(|py| {
        let module = ERRORS_MODULE.get_or_try_init(py, || {
            PyModule::import(py, "llmlb_fast.errors").map(Bound::unbind)
        });
        let class = module.and_then(|m| m.bind(py).getattr(class_name(&err)));
        match class {
            Ok(class) => match class.call1((err.to_string(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(e) => e,
        }
    })
}

pub fn invalid_input(message: impl Into<String>) -> PyErr {
    to_py(CoreError::InvalidInput(message.into()))
}

pub trait IntoPyResult<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
