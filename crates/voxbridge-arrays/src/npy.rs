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

/// A `.npy` header: the dtype, the shape and where the data starts, so rows can be read from
/// a file without holding the whole array.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub descr: String,
    pub shape: Vec<usize>,
    /// Bytes before the data.
    pub data_offset: usize,
    /// Bytes per element.
    pub item_size: usize,
}

impl Header {
    /// Bytes of the header prefix `parse` needs at most to find the header length.
    pub const PREFIX: usize = 12;

    /// The header length the first `PREFIX` (or more) bytes announce, counted from the start
    /// of the file (a caller reading from a file fetches this many bytes, then calls `parse`).
    pub fn total_len(prefix: &[u8]) -> Result<usize, String> {
        if prefix.len() < 10 || &prefix[..6] != b"\x93NUMPY" {
            return Err("not a .npy file (no \\x93NUMPY magic)".into());
        }
        match prefix[6] {
            1 => Ok(10 + u16::from_le_bytes([prefix[8], prefix[9]]) as usize),
            2 | 3 if prefix.len() >= 12 => {
                Ok(12 + u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize)
            }
            v => Err(format!(".npy format version {v} is not supported")),
        }
    }

    /// Parses the header at the start of `bytes` (the whole file, or at least `total_len`).
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        let end = Self::total_len(bytes)?;
        let start = if bytes[6] == 1 { 10 } else { 12 };
        let header = bytes.get(start..end).ok_or("truncated .npy header")?;
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
        let (_, item_size) = dtype(descr)?;
        Ok(Header { descr: descr.to_string(), shape, data_offset: end, item_size })
    }

    /// Bytes of the data (every element).
    pub fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.item_size
    }

    /// Bytes of one row (the elements under one index of the first axis).
    pub fn row_len(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>() * self.item_size
    }
}

/// Elements of dtype `descr` (little-endian bytes) as `f32`.
pub fn decode_f32(descr: &str, bytes: &[u8]) -> Result<Vec<f32>, String> {
    let (kind, size) = dtype(descr)?;
    Ok(bytes.chunks_exact(size).map(|b| kind(b) as f32).collect())
}

/// Parses `bytes` (a whole `.npy` file); errors say what is wrong, the caller names the file.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    let header = Header::parse(bytes)?;
    let data = &bytes[header.data_offset..];
    if data.len() != header.data_len() {
        return Err(format!(
            "{} data bytes for shape {:?} of {} (expected {})",
            data.len(),
            header.shape,
            header.descr,
            header.data_len()
        ));
    }
    let (kind, size) = dtype(&header.descr)?;
    let values = data.chunks_exact(size).map(kind).collect();
    Ok(NpyArray { descr: header.descr, shape: header.shape, values })
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
