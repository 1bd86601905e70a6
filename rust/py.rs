//! The PyO3 binding, `guard._rust`: the only file that touches Python. It turns Python sequences into
//! borrowed UTF-8 slices (a bad item becomes a row problem with its reason), releases the GIL for the
//! work, maps errors to Python exceptions naming the row, and hands results back to numpy without
//! copying (`into_pyarray` takes ownership of the Rust vectors).

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArrayDyn,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{
    PyFileNotFoundError, PyOverflowError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::pack::{self as packing, PackError};
use crate::tokenize::{
    self, DecodeError, Dropped, EncodeError, Field, Flat, OnBad, Problem, Reason, Tok,
};

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

/// Each item as a tokenizer input: its UTF-8 text, or why it is not text ("not a string", "invalid
/// UTF-8"), decided here since only the binding sees Python objects.
fn fields<'a>(objs: &'a [Bound<'_, PyAny>]) -> Vec<Field<'a>> {
    objs.iter()
        .map(|obj| match obj.cast::<PyString>() {
            Err(_) => Err(Problem {
                reason: Reason::NotAString,
                detail: format!("got {}", type_name(obj)),
            }),
            Ok(s) => s.to_str().map_err(|e| Problem {
                reason: Reason::InvalidUtf8,
                detail: e.to_string(),
            }),
        })
        .collect()
}

fn on_bad(errors: &str) -> PyResult<OnBad> {
    match errors {
        "raise" => Ok(OnBad::Raise),
        "skip" => Ok(OnBad::Skip),
        other => Err(PyValueError::new_err(format!(
            "errors must be \"raise\" or \"skip\", got {other:?}"
        ))),
    }
}

/// A bad row: TypeError when the field is not a string, ValueError otherwise; a failing tokenizer is
/// a RuntimeError.
fn encode_error(e: EncodeError) -> PyErr {
    match &e {
        EncodeError::Row(bad) if bad.reason == Reason::NotAString => {
            PyTypeError::new_err(e.to_string())
        }
        EncodeError::Tokenizer { .. } => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn indices(rows: Vec<usize>) -> Vec<i64> {
    rows.into_iter().map(|i| i as i64).collect()
}

fn dropped_dict<'py>(py: Python<'py>, dropped: Dropped) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (reason, rows) in dropped {
        dict.set_item(reason.as_str(), rows)?;
    }
    Ok(dict)
}

fn put_flat<'py>(dict: &Bound<'py, PyDict>, prefix: &str, flat: Flat) -> PyResult<()> {
    let py = dict.py();
    dict.set_item(format!("{prefix}ids"), flat.ids.into_pyarray(py))?;
    dict.set_item(format!("{prefix}offsets"), flat.offsets.into_pyarray(py))?;
    Ok(())
}

/// An id the tokenizer has no token for: ValueError; a decoder that fails: RuntimeError.
fn decode_error(e: DecodeError) -> PyErr {
    match &e {
        DecodeError::UnknownId { .. } => PyValueError::new_err(e.to_string()),
        DecodeError::Decoder { .. } => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Append the ids of one sequence to `out`: a 1-D int64 numpy array is read directly, anything else
/// is iterated and each item taken as a Python int (numpy integer scalars included, floats refused).
/// Errors name the row (in a batch) and the position.
fn append_ids(
    obj: &Bound<'_, PyAny>,
    row: Option<usize>,
    vocab_size: usize,
    out: &mut Vec<i64>,
) -> PyResult<()> {
    if let Ok(array) = obj.cast::<PyArray1<i64>>() {
        let ids = array
            .try_readonly()
            .map_err(|e| PyValueError::new_err(format!("cannot read the ids array: {e}")))?;
        out.extend(ids.as_array().iter().copied());
        return Ok(());
    }
    let row_prefix = row.map_or(String::new(), |r| format!("row {r}, "));
    let not_a_sequence = || {
        PyTypeError::new_err(format!(
            "{row_prefix}ids must be a sequence of ints, got {}",
            type_name(obj)
        ))
    };
    if obj.is_instance_of::<PyString>() {
        return Err(not_a_sequence());
    }
    let iter = obj.try_iter().map_err(|_| not_a_sequence())?;
    for (position, item) in iter.enumerate() {
        let item = item?;
        let id = item.extract::<i64>().map_err(|e| {
            if e.is_instance_of::<PyOverflowError>(item.py()) {
                let value = item.str().map(|s| s.to_string()).unwrap_or_default();
                PyValueError::new_err(format!(
                    "{row_prefix}position {position}: id {value} is out of range for the vocabulary of size {vocab_size}"
                ))
            } else {
                // A sequence inside one sequence: the caller meant decode_batch.
                let hint = if row.is_none() && item.try_iter().is_ok() {
                    " (decode_batch takes many sequences)"
                } else {
                    ""
                };
                PyTypeError::new_err(format!(
                    "{row_prefix}position {position}: ids must be ints, got {}{hint}",
                    type_name(&item)
                ))
            }
        })?;
        out.push(id);
    }
    Ok(())
}

/// A Hugging Face tokenizer.json, loaded by the Rust `tokenizers` crate (see rust/tokenize/).
#[pyclass(frozen, module = "guard._rust")]
struct Tokenizer {
    inner: Arc<Tok>,
}

#[pymethods]
impl Tokenizer {
    /// Load a tokenizer.json file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        if !path.is_file() {
            return Err(PyFileNotFoundError::new_err(format!(
                "no tokenizer file at {}",
                path.display()
            )));
        }
        let tok = py
            .detach(|| Tok::from_file(&path))
            .map_err(PyValueError::new_err)?;
        Ok(Tokenizer {
            inner: Arc::new(tok),
        })
    }

    /// Load a tokenizer from the JSON text of a tokenizer.json.
    #[staticmethod]
    fn from_str(py: Python<'_>, json: &str) -> PyResult<Self> {
        let tok = py
            .detach(|| Tok::from_json(json))
            .map_err(PyValueError::new_err)?;
        Ok(Tokenizer {
            inner: Arc::new(tok),
        })
    }

    #[pyo3(signature = (with_added_tokens = true))]
    fn vocab_size(&self, with_added_tokens: bool) -> usize {
        self.inner.vocab_size(with_added_tokens)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    #[getter]
    fn num_special_tokens(&self) -> usize {
        self.inner.num_special_tokens()
    }

    #[pyo3(signature = (text, add_special_tokens = true))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &str,
        add_special_tokens: bool,
    ) -> PyResult<Bound<'py, PyArray1<i32>>> {
        let ids = py
            .detach(|| self.inner.encode(text, add_special_tokens))
            .map_err(PyRuntimeError::new_err)?;
        let ids: Vec<i32> = ids.into_iter().map(|id| id as i32).collect();
        Ok(ids.into_pyarray(py))
    }

    /// The text of one sequence of ids, as the Python package's `decode` (GIL released).
    #[pyo3(signature = (ids, skip_special_tokens = true))]
    fn decode(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<String> {
        let mut flat = Vec::new();
        append_ids(ids, None, self.inner.vocab_size(true), &mut flat)?;
        py.detach(|| self.inner.decode(&flat, skip_special_tokens))
            .map_err(decode_error)
    }

    /// The text of each sequence of ids, in order, as the Python package's `decode_batch`: the ids
    /// are read with the GIL held, then decoded in parallel with it released.
    #[pyo3(signature = (sequences, skip_special_tokens = true))]
    fn decode_batch(
        &self,
        py: Python<'_>,
        sequences: &Bound<'_, PyAny>,
        skip_special_tokens: bool,
    ) -> PyResult<Vec<String>> {
        let not_sequences = || {
            PyTypeError::new_err(format!(
                "sequences must be a sequence of id sequences, got {}",
                type_name(sequences)
            ))
        };
        if sequences.is_instance_of::<PyString>() {
            return Err(not_sequences());
        }
        let vocab_size = self.inner.vocab_size(true);
        let mut flat = Vec::new();
        let mut ends = Vec::new();
        for (row, seq) in sequences
            .try_iter()
            .map_err(|_| not_sequences())?
            .enumerate()
        {
            append_ids(&seq?, Some(row), vocab_size, &mut flat)?;
            ends.push(flat.len());
        }
        let mut start = 0;
        let rows: Vec<&[i64]> = ends
            .iter()
            .map(|&end| {
                let row = &flat[start..end];
                start = end;
                row
            })
            .collect();
        py.detach(|| tokenize::decode_batch(&self.inner, &rows, skip_special_tokens))
            .map_err(decode_error)
    }
}

/// encode_texts(tokenizer, texts, *, max_length=None, add_special_tokens=True, errors="raise") -> dict
/// with ids (int32), offsets (int64, n_kept + 1), kept (int64), dropped ({reason: [rows]}).
#[pyfunction]
#[pyo3(signature = (tokenizer, texts, *, max_length = None, add_special_tokens = true, errors = "raise"))]
fn encode_texts<'py>(
    py: Python<'py>,
    tokenizer: &Bound<'py, Tokenizer>,
    texts: &Bound<'py, PyAny>,
    max_length: Option<usize>,
    add_special_tokens: bool,
    errors: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = tokenize::TextOptions {
        max_length,
        add_special_tokens,
        on_bad: on_bad(errors)?,
    };
    let tok = Arc::clone(&tokenizer.get().inner);
    let objs = items(texts, "texts")?;
    let inputs = fields(&objs);
    let out = py
        .detach(|| tokenize::encode_texts(&tok, &inputs, &opts))
        .map_err(encode_error)?;
    let dict = PyDict::new(py);
    put_flat(&dict, "", out.seqs)?;
    dict.set_item("kept", indices(out.kept).into_pyarray(py))?;
    dict.set_item("dropped", dropped_dict(py, out.dropped)?)?;
    Ok(dict)
}

/// encode_pairs(tokenizer, prompts, chosen, rejected, *, max_length=1024, max_prompt_length=None,
/// add_special_tokens=True, eos_token_id=None, errors="raise") -> dict with chosen_ids,
/// chosen_offsets, rejected_ids, rejected_offsets, chosen_prompt_lengths, rejected_prompt_lengths,
/// kept, dropped.
#[pyfunction]
#[pyo3(
    signature = (tokenizer, prompts, chosen, rejected, *, max_length = Some(1024), max_prompt_length = None,
                 add_special_tokens = true, eos_token_id = None, errors = "raise"),
    text_signature = "(tokenizer, prompts, chosen, rejected, *, max_length=1024, max_prompt_length=None, \
                      add_special_tokens=True, eos_token_id=None, errors=\"raise\")"
)]
#[allow(clippy::too_many_arguments)]
fn encode_pairs<'py>(
    py: Python<'py>,
    tokenizer: &Bound<'py, Tokenizer>,
    prompts: &Bound<'py, PyAny>,
    chosen: &Bound<'py, PyAny>,
    rejected: &Bound<'py, PyAny>,
    max_length: Option<usize>,
    max_prompt_length: Option<usize>,
    add_special_tokens: bool,
    eos_token_id: Option<u32>,
    errors: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = tokenize::PairOptions {
        max_length,
        max_prompt_length,
        add_special_tokens,
        eos_token_id,
        on_bad: on_bad(errors)?,
    };
    let tok = Arc::clone(&tokenizer.get().inner);
    let prompt_objs = items(prompts, "prompts")?;
    let chosen_objs = items(chosen, "chosen")?;
    let rejected_objs = items(rejected, "rejected")?;
    let (p, c, r) = (
        fields(&prompt_objs),
        fields(&chosen_objs),
        fields(&rejected_objs),
    );
    let out = py
        .detach(|| tokenize::encode_pairs(&tok, &p, &c, &r, &opts))
        .map_err(encode_error)?;
    let dict = PyDict::new(py);
    put_flat(&dict, "chosen_", out.chosen)?;
    put_flat(&dict, "rejected_", out.rejected)?;
    dict.set_item(
        "chosen_prompt_lengths",
        out.chosen_prompt_lengths.into_pyarray(py),
    )?;
    dict.set_item(
        "rejected_prompt_lengths",
        out.rejected_prompt_lengths.into_pyarray(py),
    )?;
    dict.set_item("kept", indices(out.kept).into_pyarray(py))?;
    dict.set_item("dropped", dropped_dict(py, out.dropped)?)?;
    Ok(dict)
}

/// Non-negative lengths as u64, or an error naming the first negative one: `what[i]`, or for pairs
/// (`width` 2, flattened [n, 2]) `what[pair, 0|1]`.
fn lengths_u64(values: &[i64], what: &str, width: usize) -> PyResult<Vec<u64>> {
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            u64::try_from(v).map_err(|_| {
                let at = if width == 2 {
                    format!("{}, {}", i / 2, i % 2)
                } else {
                    i.to_string()
                };
                PyValueError::new_err(format!("{what}[{at}] is negative ({v})"))
            })
        })
        .collect()
}

/// pack(lengths, max_tokens) -> list of int64 arrays of item indices. lengths: int64 [n] (one
/// sequence per item) or [n, 2] (pairs: chosen and rejected lengths, packed together).
#[pyfunction]
fn pack<'py>(
    py: Python<'py>,
    lengths: PyReadonlyArrayDyn<'py, i64>,
    max_tokens: i64,
) -> PyResult<Bound<'py, PyList>> {
    let shape = lengths.shape().to_vec();
    let pairs = match shape[..] {
        [_] => false,
        [_, 2] => true,
        _ => {
            return Err(PyValueError::new_err(format!(
                "lengths must have shape [n] or [n, 2], got {shape:?}"
            )))
        }
    };
    let flat = lengths_u64(lengths.as_slice()?, "lengths", if pairs { 2 } else { 1 })?;
    if max_tokens < 1 {
        return Err(PyValueError::new_err(format!(
            "max_tokens must be at least 1, got {max_tokens}"
        )));
    }
    let budget = max_tokens as u64;
    let result = py.detach(|| {
        if pairs {
            let (chosen, rejected): (Vec<u64>, Vec<u64>) =
                flat.chunks_exact(2).map(|p| (p[0], p[1])).unzip();
            packing::pack(&packing::pair_costs(&chosen, &rejected), budget)
        } else {
            packing::pack(&flat, budget)
        }
    });
    let batches = result.map_err(|e| match e {
        PackError::TooLong { index, cost, .. } if pairs => PyValueError::new_err(format!(
            "pair {index} has {cost} tokens (chosen {} + rejected {}), more than max_tokens {max_tokens}",
            flat[2 * index],
            flat[2 * index + 1]
        )),
        e => PyValueError::new_err(e.to_string()),
    })?;
    let list = PyList::empty(py);
    for batch in batches {
        list.append(indices(batch).into_pyarray(py))?;
    }
    Ok(list)
}

/// `position_ids` and `cu_seqlens` as numpy arrays.
type Positions<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i32>>);

/// packed_positions(lengths) -> (position_ids int64 [sum], cu_seqlens int32 [k + 1]) for the
/// sequences of one packed row.
#[pyfunction]
fn packed_positions<'py>(
    py: Python<'py>,
    lengths: PyReadonlyArray1<'py, i64>,
) -> PyResult<Positions<'py>> {
    let lengths = lengths_u64(lengths.as_slice()?, "lengths", 1)?;
    let (positions, cu_seqlens) = py
        .detach(|| packing::packed_positions(&lengths))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok((positions.into_pyarray(py), cu_seqlens.into_pyarray(py)))
}

#[pymodule]
fn _rust(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(dedup, m)?)?;
    m.add_class::<Tokenizer>()?;
    m.add_function(wrap_pyfunction!(encode_texts, m)?)?;
    m.add_function(wrap_pyfunction!(encode_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(packed_positions, m)?)?;
    Ok(())
}
