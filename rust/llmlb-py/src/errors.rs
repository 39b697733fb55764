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
    error_of(class_name(&err), (err.to_string(),))
}

/// An instance of `llmlb_fast.errors.<class>` built from `arguments`, as a PyErr.
pub fn error_of(class: &str, arguments: impl for<'py> pyo3::call::PyCallArgs<'py>) -> PyErr {
    Python::attach(|py| {
        let errors = ERRORS_MODULE.get_or_try_init(py, || {
            PyModule::import(py, "llmlb_fast.errors").map(Bound::unbind)
        });
        let class = errors.and_then(|m| m.bind(py).getattr(class));
        match class.and_then(|class| class.call1(arguments)) {
            Ok(instance) => PyErr::from_value(instance),
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
