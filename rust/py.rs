//! The PyO3 binding, `guard._rust`: the only file that touches Python. It turns Python sequences into
//! borrowed byte slices (naming the row and reason when one is bad), releases the GIL for the work,
//! and hands results back to numpy without copying.

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;

/// Every item of a Python iterable, as owned references (kept alive while their text is borrowed).
fn items<'py>(seq: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    seq.try_iter()
        .map_err(|_| {
            PyTypeError::new_err(format!(
                "{name} must be a sequence of str, got {}",
                type_name(seq)
            ))
        })?
        .collect()
}

/// The UTF-8 text of each item, or an error naming the first row that is not valid text.
fn texts<'a>(objs: &'a [Bound<'_, PyAny>], field: &str) -> PyResult<Vec<&'a str>> {
    objs.iter()
        .enumerate()
        .map(|(row, obj)| {
            let s = obj.cast::<PyString>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "row {row}: {field} is not a string (got {})",
                    type_name(obj)
                ))
            })?;
            s.to_str().map_err(|e| {
                PyValueError::new_err(format!("row {row}: {field} is not valid UTF-8 ({e})"))
            })
        })
        .collect()
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// dedup(prompts, responses) -> numpy int64 array of the row indices to keep (first occurrence, ascending).
#[pyfunction]
fn dedup<'py>(
    py: Python<'py>,
    prompts: &Bound<'py, PyAny>,
    responses: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let prompt_objs = items(prompts, "prompts")?;
    let response_objs = items(responses, "responses")?;
    let prompt_texts = texts(&prompt_objs, "prompt")?;
    let response_texts = texts(&response_objs, "response")?;
    let keep = py
        .detach(|| crate::dedup::dedup_pairs(&prompt_texts, &response_texts))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let keep: Vec<i64> = keep.into_iter().map(|i| i as i64).collect();
    Ok(keep.into_pyarray(py))
}

#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(dedup, m)?)?;
    Ok(())
}
