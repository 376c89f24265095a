//! Any HDF5 file that is no Keras file: its datasets under `datasets/`, its groups as
//! directories.

use super::h5::{self, H5Context, push_dataset};
use crate::model::{Model, SkippedTensor, TensorId, path_of};

/// Deepest group nesting followed (guards against hostile files).
const MAX_GROUP_DEPTH: usize = 64;

pub fn read(file: &hdf5::File, ctx: &H5Context) -> Model {
    let mut model = Model::default();
    let contents = h5::walk_group(file, MAX_GROUP_DEPTH);
    model.dirs.push(vec!["datasets".into()]);
    model.dirs.extend(contents.groups.iter().map(|g| path_of(&["datasets"], g)));
    for (path, ds) in contents.datasets {
        push_dataset(&ds, path_of(&["datasets"], &path), ctx, &mut model);
    }
    for (path, why) in contents.unreadable {
        model.skipped.push(SkippedTensor::new(TensorId::Path(path_of(&["datasets"], &path).join("/")), why));
    }
    model
}
