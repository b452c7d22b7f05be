//! `.npy` (NumPy format 1.0–3.0) of any plain little-endian numeric dtype, read as `f64`
//! (behaviour tables come as float64, float32 or integers, depending on the release), and
//! written in format 1.0.

/// A C-ordered array: its dtype (`descr`, e.g. `<f4`), shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub descr: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl NpyArray {
    pub fn is_float(&self) -> bool {
        matches!(self.descr.as_str(), "<f2" | "<f4" | "<f8")
    }
}

/// Parses `bytes` (a whole `.npy` file); errors say what is wrong, the caller names the file.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    let magic = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != magic {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes.get(start..start + header_len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no 'descr'")?;
    let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
    if dict_value(header, "fortran_order").is_some_and(|v| v.trim().starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported (save with C order)".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("the .npy header has no 'shape'")?;
    let shape_text = shape_text.trim().trim_start_matches('(');
    let shape_text = &shape_text[..shape_text.find(')').ok_or("unclosed shape tuple")?];
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad dimension {s:?} in the .npy shape")))
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + header_len..];
    let (kind, size) = dtype(descr)?;
    if data.len() != count * size {
        return Err(format!("{} data bytes for shape {shape:?} of {descr} (expected {})", data.len(), count * size));
    }
    let values = data.chunks_exact(size).map(kind).collect();
    Ok(NpyArray { descr: descr.to_string(), shape, values })
}

type Decode = fn(&[u8]) -> f64;

/// Decoder and size of a little-endian (or byte-sized) numeric dtype.
fn dtype(descr: &str) -> Result<(Decode, usize), String> {
    Ok(match descr {
        "<f8" => (|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])), 8),
        "<f4" => (|b| f64::from(f32::from_le_bytes(b.try_into().unwrap_or([0; 4]))), 4),
        "<f2" => (|b| f64::from(half::f16::from_le_bytes([b[0], b[1]])), 2),
        "<i8" => (|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64, 8),
        "<i4" => (|b| f64::from(i32::from_le_bytes(b.try_into().unwrap_or([0; 4]))), 4),
        "<i2" => (|b| f64::from(i16::from_le_bytes([b[0], b[1]])), 2),
        "|i1" => (|b| f64::from(b[0] as i8), 1),
        "|u1" | "|b1" => (|b| f64::from(b[0]), 1),
        "<u2" => (|b| f64::from(u16::from_le_bytes([b[0], b[1]])), 2),
        "<u4" => (|b| f64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4]))), 4),
        "<u8" => (|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f64, 8),
        other => return Err(format!("dtype {other:?} is not supported (little-endian numbers only)")),
    })
}

/// The text after `'key':` up to the next top-level comma (a tuple's commas are inside parens).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?;
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    Some(rest)
}

/// Writes float64 values.
pub fn write_f64(shape: &[usize], values: &[f64]) -> Vec<u8> {
    write(shape, "<f8", &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// Writes float32 values.
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    write(shape, "<f4", &values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// A C-ordered array of dtype `descr` whose little-endian element bytes are `data`.
pub fn write(shape: &[usize], descr: &str, data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_other_dtypes() {
        let bytes = write_f64(&[1, 3], &[1.0, -1.0, 73_000.0]);
        let want = NpyArray { descr: "<f8".into(), shape: vec![1, 3], values: vec![1.0, -1.0, 73_000.0] };
        assert_eq!(parse(&bytes).unwrap(), want);
        let bytes = write(&[2], "<i8", &[5i64.to_le_bytes(), (-1i64).to_le_bytes()].concat());
        assert_eq!(parse(&bytes).unwrap().values, [5.0, -1.0]);
        assert_eq!(parse(&write_f32(&[3], &[0.5, 1.5, 2.5])).unwrap().shape, [3]);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(parse(b"PK\x03\x04zip").unwrap_err().contains("magic"));
        let mut bytes = write_f64(&[1, 17], &[0.0; 17]);
        bytes.truncate(bytes.len() - 8);
        assert!(parse(&bytes).unwrap_err().contains("data bytes for shape [1, 17]"));
        let bytes = write(&[1], ">f8", &[0; 8]);
        assert!(parse(&bytes).unwrap_err().contains("not supported"));
    }
}
