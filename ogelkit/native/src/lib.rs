//! ogelkit_native: the per-chunk framing work of the gateway's Redis front door, in Rust.
//!
//! Each function here is a drop-in for the pure-Python function of the same name in
//! `ogelkit_redis.wire` (same arguments, same results, same `ProtocolError` messages); wire.py
//! selects them when this module imports and `OGELKIT_NATIVE` is not `0`. See
//! docs/dev/native.md.

use pyo3::exceptions::{PyIndexError, PyRuntimeError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyByteArray, PyBytes, PyList, PyTuple, PyType};

mod resp;

use resp::{Req, ReqError};

/// `ogelkit_redis.wire.ProtocolError`, and the pure-Python `reply_scan` that an unusual reply
/// length is handed to (see `reply_scan`). Set once by `redis_init`.
static PROTOCOL_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();
static PY_REPLY_SCAN: GILOnceCell<PyObject> = GILOnceCell::new();
/// The `ogelkit_redis.wire` module: an inline request's line goes to its `split_args`
/// (native or not, or a test's stand-in), looked up on each inline request (a rare path).
static WIRE: GILOnceCell<PyObject> = GILOnceCell::new();

const MAX_INLINE: usize = 64 * 1024;

fn protocol_error(py: Python<'_>, msg: String) -> PyErr {
    match PROTOCOL_ERROR.get(py) {
        Some(cls) => PyErr::from_type(cls.bind(py).clone(), msg),
        None => PyRuntimeError::new_err("ogelkit_native.redis_init was not called"),
    }
}

fn req_error(py: Python<'_>, e: ReqError) -> PyErr {
    protocol_error(py, e.message())
}

/// Register the exception class to raise and the Python scanner to defer to.
#[pyfunction]
fn redis_init(
    py: Python<'_>,
    protocol_error: Bound<'_, PyType>,
    py_reply_scan: PyObject,
    wire: PyObject,
) -> PyResult<()> {
    let _ = PROTOCOL_ERROR.set(py, protocol_error.unbind());
    let _ = PY_REPLY_SCAN.set(py, py_reply_scan);
    let _ = WIRE.set(py, wire);
    Ok(())
}

fn list_of(py: Python<'_>, buf: &[u8], args: &[(usize, usize)]) -> PyResult<Py<PyList>> {
    let list = PyList::empty(py);
    for &(s, e) in args {
        list.append(PyBytes::new(py, &buf[s..e]))?;
    }
    Ok(list.unbind())
}

/// `wire.parse_command`: one request at `pos`, or the rest of the one `partial` holds.
#[pyfunction]
fn parse_command<'py>(
    py: Python<'py>,
    buf: &Bound<'py, PyBytes>,
    pos: usize,
    max_bulk: u64,
    max_args: u64,
    partial: &Bound<'py, PyAny>,
) -> PyResult<(PyObject, usize)> {
    let data = buf.as_bytes();
    let n_argv = intern!(py, "argv");
    let argv = partial.getattr(n_argv)?;
    if !argv.is_none() {
        partial.setattr(n_argv, py.None())?;
        let list = argv.downcast::<PyList>()?.clone();
        let left: u64 = partial.getattr(intern!(py, "left"))?.extract()?;
        let mut spans = Vec::new();
        let r = resp::bulks(data, pos, max_bulk, left, &mut spans);
        for &(s, e) in &spans {
            list.append(PyBytes::new(py, &data[s..e]))?;
        }
        return match r {
            Ok(resp::Bulks::Done(end)) => Ok((list.into_any().unbind(), end)),
            Ok(resp::Bulks::More { at, left, need }) => {
                set_partial(py, partial, Some(&list), left, need as u64, false)?;
                Ok((py.None(), at))
            }
            Err(e) => Err(req_error(py, e)),
        };
    }
    if pos >= data.len() {
        return Err(PyIndexError::new_err("index out of range"));
    }
    let mut spans = Vec::new();
    match resp::request(data, pos, max_bulk, max_args, &mut spans) {
        Ok(Req::Done(end)) => Ok((list_of(py, data, &spans)?.into_any(), end)),
        Ok(Req::Inline(start, stop, end)) => {
            let wire = WIRE.get(py).ok_or_else(|| {
                PyRuntimeError::new_err("ogelkit_native.redis_init was not called")
            })?;
            let line = PyBytes::new(py, &data[start..stop]);
            let argv = wire
                .bind(py)
                .getattr(intern!(py, "split_args"))?
                .call1((line,))?;
            Ok((argv.unbind(), end))
        }
        Ok(Req::Line) => {
            partial.setattr(intern!(py, "need"), MAX_INLINE + 1)?;
            partial.setattr(intern!(py, "line"), true)?;
            Ok((py.None(), pos))
        }
        Ok(Req::More { at, left, need }) => {
            let list = list_of(py, data, &spans)?;
            set_partial(py, partial, Some(list.bind(py)), left, need as u64, false)?;
            Ok((py.None(), at))
        }
        Err(e) => Err(req_error(py, e)),
    }
}

fn set_partial(
    py: Python<'_>,
    partial: &Bound<'_, PyAny>,
    argv: Option<&Bound<'_, PyList>>,
    left: u64,
    need: u64,
    line: bool,
) -> PyResult<()> {
    if let Some(a) = argv {
        partial.setattr(intern!(py, "argv"), a)?;
    }
    partial.setattr(intern!(py, "left"), left)?;
    partial.setattr(intern!(py, "need"), need)?;
    partial.setattr(intern!(py, "line"), line)?;
    Ok(())
}

/// `wire.parse_chunk`: every request of `buf[pos:]` as argument lists, if that part of the
/// chunk is complete multibulk requests only, with no error: else `None` (nothing changed;
/// the caller parses it request by request with `parse_command`). Empty requests (`*0`,
/// `*-1`) are `[]`. One call per chunk instead of one per request.
#[pyfunction]
fn parse_chunk<'py>(
    py: Python<'py>,
    buf: &Bound<'py, PyBytes>,
    pos: usize,
    max_bulk: u64,
    max_args: u64,
) -> PyResult<PyObject> {
    let data = buf.as_bytes();
    let n = data.len();
    let mut p = pos;
    let mut reqs: Vec<(usize, usize)> = Vec::new(); // spans index range per request
    let mut spans: Vec<(usize, usize)> = Vec::new();
    if p >= n {
        return Ok(py.None());
    }
    while p < n {
        if data[p] != b'*' {
            return Ok(py.None());
        }
        let first = spans.len();
        match resp::request(data, p, max_bulk, max_args, &mut spans) {
            Ok(Req::Done(end)) => {
                reqs.push((first, spans.len()));
                p = end;
            }
            _ => return Ok(py.None()),
        }
    }
    let out = PyList::empty(py);
    for (a, b) in reqs {
        out.append(list_of(py, data, &spans[a..b])?)?;
    }
    Ok(out.into_any().unbind())
}

fn bytes_of<'a>(buf: &'a Bound<'_, PyAny>) -> PyResult<&'a [u8]> {
    if let Ok(b) = buf.downcast::<PyBytes>() {
        return Ok(b.as_bytes());
    }
    if let Ok(b) = buf.downcast::<PyByteArray>() {
        // SAFETY: no Python code runs while the slice is in use (the scan below is pure
        // Rust, and the slice is dropped before any call back into Python).
        return Ok(unsafe { b.as_bytes() });
    }
    Err(PyTypeError::new_err(
        "a bytes-like object (bytes or bytearray) is required",
    ))
}

/// `wire.reply_scan`: scan `remaining` more elements of a reply from `pos`.
#[pyfunction]
fn reply_scan<'py>(
    py: Python<'py>,
    buf: &Bound<'py, PyAny>,
    pos: i64,
    remaining: i64,
) -> PyResult<PyObject> {
    let scanned = {
        let data = bytes_of(buf)?;
        if pos < 0 {
            None
        } else {
            resp::reply_scan(data, pos as usize, remaining)
        }
    };
    match scanned {
        Some((a, b, c)) => Ok((a, b, c).into_pyobject(py)?.into_any().unbind()),
        None => defer(py, buf, pos, remaining),
    }
}

/// Anything the fast scanner does not take exactly (a length that is not plain digits, an
/// overflow, a malformed length and its error message): the pure-Python scanner decides.
fn defer(py: Python<'_>, buf: &Bound<'_, PyAny>, pos: i64, remaining: i64) -> PyResult<PyObject> {
    let f = PY_REPLY_SCAN
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("ogelkit_native.redis_init was not called"))?;
    f.call1(py, (buf, pos, remaining))
}

/// `wire.reply_end`: end offset of the reply at `pos`, `-need` if incomplete.
#[pyfunction]
fn reply_end<'py>(py: Python<'py>, buf: &Bound<'py, PyAny>, pos: i64) -> PyResult<PyObject> {
    let scanned = {
        let data = bytes_of(buf)?;
        if pos < 0 {
            None
        } else {
            resp::reply_scan(data, pos as usize, 1)
        }
    };
    let (end, remaining, need) = match scanned {
        Some((a, b, c)) => (a, b, c),
        None => {
            let t = defer(py, buf, pos, 1)?;
            let t = t.bind(py).downcast::<PyTuple>()?.clone();
            let remaining = t.get_item(1)?;
            if remaining.is_truthy()? {
                return Ok(t.get_item(2)?.neg()?.unbind());
            }
            return Ok(t.get_item(0)?.unbind());
        }
    };
    let r: i64 = if remaining != 0 { -need } else { end };
    Ok(r.into_pyobject(py)?.into_any().unbind())
}

/// `wire.split_args`: an inline request's arguments, as Redis's `sdssplitargs`.
#[pyfunction]
fn split_args(py: Python<'_>, line: &Bound<'_, PyBytes>) -> PyResult<Py<PyList>> {
    match resp::split_args(line.as_bytes()) {
        Ok(args) => {
            let list = PyList::empty(py);
            for a in args {
                list.append(PyBytes::new(py, &a))?;
            }
            Ok(list.unbind())
        }
        Err(e) => Err(req_error(py, e)),
    }
}

#[pymodule]
fn ogelkit_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(redis_init, m)?)?;
    m.add_function(wrap_pyfunction!(parse_command, m)?)?;
    m.add_function(wrap_pyfunction!(parse_chunk, m)?)?;
    m.add_function(wrap_pyfunction!(reply_scan, m)?)?;
    m.add_function(wrap_pyfunction!(reply_end, m)?)?;
    m.add_function(wrap_pyfunction!(split_args, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
