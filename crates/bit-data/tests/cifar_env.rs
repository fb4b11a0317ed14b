//! `$BIT_CIFAR_BASE_URL` redirects the CIFAR download. Alone in its test binary: setting an
//! environment variable while other threads read the environment (HTTP clients look up proxy
//! variables) is a data race.

use bit_data::{CIFAR_BASE_URL_ENV, Cifar, DataError, FetchError, Split};

#[test]
fn base_url_comes_from_the_environment() {
    let dir = bit_testkit::scratch_root("bit-data-cifar-env");
    std::fs::remove_dir_all(&dir).ok();
    // SAFETY: the only test of this binary; no other thread reads the environment yet.
    unsafe { std::env::set_var(CIFAR_BASE_URL_ENV, "http://127.0.0.1:9/mirror") };
    match Cifar::Cifar100.load(&dir, Split::Valid).unwrap_err() {
        DataError::Fetch(FetchError::Download { url, .. }) => {
            assert_eq!(url, "http://127.0.0.1:9/mirror/cifar-100-binary.tar.gz")
        }
        other => panic!("expected a Download error from the mirror, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
