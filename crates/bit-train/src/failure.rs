//! Telling a device's failure from a bug. Burn reports a device that stops answering (a dead
//! `bit serve` worker, a broken connection, a lost GPU) by panicking wherever a tensor is next
//! read, often in our own code, so neither the message nor the location of the panic says
//! whose fault it was. The devices can: after a panic each is asked for one tiny tensor, and
//! only if one cannot answer is the panic a device failure ("rerun once the device is back");
//! otherwise it is a bug, to be reported.

use std::panic::{self, AssertUnwindSafe};

use burn::tensor::{Device, Tensor};

/// The first of `devices` that cannot compute and return a one-element tensor, by its name.
pub(crate) fn first_unresponsive(devices: &[Device]) -> Option<&Device> {
    devices.iter().find(|device| {
        let answered = panic::catch_unwind(AssertUnwindSafe(|| {
            (Tensor::<1>::ones([1], *device) + 1.0)
                .try_into_data()
                .is_ok()
        }));
        !matches!(answered, Ok(true))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_working_device_answers() {
        assert!(first_unresponsive(&[Device::flex()]).is_none());
    }
}
