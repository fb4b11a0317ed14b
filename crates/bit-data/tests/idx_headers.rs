//! IDX files whose headers lie: sizes that overflow, declare more than the reader accepts, or
//! do not match the data. Each is a format error found before any large allocation.

use std::io::Write;
use std::path::Path;

use bit_data::{DataError, ImageDataset, Split, load_idx};

fn write_pair(dir: &Path, images_header: &[u8], images_data: &[u8], gzip: bool) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = images_header.to_vec();
    images.extend_from_slice(images_data);
    let labels = [&[0u8, 0, 8, 1, 0, 0, 0, 4][..], &[0, 1, 2, 3]].concat();
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&images).unwrap();
        std::fs::write(dir.join("t10k-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), images).unwrap();
    }
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), labels).unwrap();
}

fn header(dims: [u32; 3]) -> Vec<u8> {
    let mut h = vec![0u8, 0, 8, 3];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

fn format_error(dir: &Path) -> String {
    match load_idx(dir, Split::Valid, None) {
        Err(DataError::Format { reason, .. }) => reason,
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn lying_headers_are_format_errors() {
    let root = bit_testkit::scratch_root("bit-data-idx");
    // Dimensions whose product overflows: [4, 2^31, 2^31] with no data.
    let dir = root.join("overflow");
    write_pair(&dir, &header([4, 1 << 31, 1 << 31]), &[], false);
    assert!(format_error(&dir).contains("declare more than"));
    // A gzip "bomb": a header declaring 4 x 2^16 x 2^16 bytes over a small stream is refused
    // from the header, before anything is decompressed into memory.
    let dir = root.join("bomb");
    write_pair(&dir, &header([4, 1 << 16, 1 << 16]), &[0; 1 << 20], true);
    assert!(format_error(&dir).contains("declare more than"));
    // Fewer data bytes than declared, and more.
    let dir = root.join("short");
    write_pair(&dir, &header([4, 2, 2]), &[0; 15], true);
    assert!(format_error(&dir).contains("15 data bytes, expected 16"));
    let dir = root.join("long");
    write_pair(&dir, &header([4, 2, 2]), &[0; 17], false);
    assert!(format_error(&dir).contains("or more"));
    // Images without pixels.
    let dir = root.join("empty-images");
    write_pair(&dir, &header([4, 0, 0]), &[], false);
    assert!(format_error(&dir).contains("images of 0x0 pixels"));
    // And the honest file loads.
    let dir = root.join("fine");
    write_pair(&dir, &header([4, 2, 2]), &[7; 16], true);
    assert_eq!(load_idx(&dir, Split::Valid, None).unwrap().len(), 4);
    std::fs::remove_dir_all(&root).ok();
}
