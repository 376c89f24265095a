//! PaddlePaddle `.pdparams` (docs/formats/paddle.md): `paddle.save` of a state dict, a pickle
//! of numpy arrays by parameter name, interpreted by the pickle VM (nothing executed) and walked
//! as a `torch.save` pickle is.

use crate::formats::options::ReadOptions;
use crate::error::OpenError;
use crate::model::Model;
use crate::source::Blob;

/// A pickle (protocol 2 to 5, a protocol 4+ FRAME allowed) whose root is a dict: `paddle.save`
/// of a state dict. The format has no magic number of its own.
pub fn sniff(head: &[u8]) -> bool {
    let body = match head {
        [0x80, 2..=5, 0x95, rest @ ..] if rest.len() >= 8 => &rest[8..],
        [0x80, 2..=5, rest @ ..] => rest,
        _ => return false,
    };
    body.first() == Some(&b'}')
}

pub fn read_pdparams(blob: &Blob, options: &ReadOptions) -> Result<Model, OpenError> {
    super::read_pickle(blob, options)
}
