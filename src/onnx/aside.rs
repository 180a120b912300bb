//! Setting a model aside on disk while the float runtime holds its own copy of the weights: the
//! main graph's initializers go to a data file, next to an ONNX file that names them as external
//! data (which tract reads one tensor at a time), and come back from it byte for byte.
//!
//! It must not decide when a model is set aside or where: the caller gives the folder, and
//! keeps nothing else that shares the model's buffer (a `Graph` built from it) while it waits,
//! or the memory is not given back.

use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::tensor_proto::DataLocation;
use super::proto::{ModelProto, StringStringEntryProto};
use super::{OnnxError, OnnxModel};

/// The ONNX file of a set-aside model, the one the runtime loads.
const MODEL_FILE: &str = "model.onnx";
/// Its data file, named relative to the ONNX file as the external-data convention wants.
const DATA_FILE: &str = "model.data";
/// Payloads smaller than this stay in the ONNX file (the threshold of onnx's own
/// `convert_model_to_external_data`): moving them saves nothing and costs a read each.
const MIN_EXTERNAL_BYTES: usize = 1024;

/// A model whose weights wait on disk ([`OnnxModel::set_aside`]); [`SetAside::restore`] gives
/// the model back, equal to the one set aside.
#[derive(Debug)]
pub struct SetAside {
    folder: PathBuf,
    origin: PathBuf,
    /// Per initializer moved out: where its payload lies in the data file, and the storage
    /// fields it had before it was pointed there.
    moved: Vec<Moved>,
    /// Digests of the two files as written, checked when they are read back.
    model_digest: blake3::Hash,
    data_digest: blake3::Hash,
}

#[derive(Debug)]
struct Moved {
    initializer: usize,
    offset: usize,
    length: usize,
    data_location: Option<i32>,
    external_data: Vec<StringStringEntryProto>,
}

impl OnnxModel {
    /// Writes the model to `folder` (created if needed) with every main-graph initializer of at
    /// least 1 KiB as ONNX external data, and lets go of it: once nothing else shares the
    /// model's buffer, its weights are on disk only. [`SetAside::runtime_model`] is the file to
    /// load it from.
    pub fn set_aside(self, folder: &Path) -> Result<SetAside, OnnxError> {
        let origin = self.origin;
        let mut proto = self.proto;
        let write_error = |path: PathBuf| move |source| OnnxError::Write { path, source };
        std::fs::create_dir_all(folder).map_err(write_error(folder.to_owned()))?;
        let mut moved = Vec::new();
        let mut payloads = Vec::new();
        let mut offset = 0;
        let initializers = proto.graph.iter_mut().flat_map(|g| &mut g.initializer);
        for (index, tensor) in initializers.enumerate() {
            let external = tensor.data_location == Some(DataLocation::External as i32);
            let Some(raw) = tensor
                .raw_data
                .take_if(|r| r.len() >= MIN_EXTERNAL_BYTES && !external)
            else {
                continue;
            };
            let length = raw.len();
            let entry = |key: &str, value: String| StringStringEntryProto {
                key: Some(key.into()),
                value: Some(value),
            };
            let external_data = std::mem::replace(
                &mut tensor.external_data,
                vec![
                    entry("location", DATA_FILE.into()),
                    entry("offset", offset.to_string()),
                    entry("length", length.to_string()),
                ],
            );
            moved.push(Moved {
                initializer: index,
                offset,
                length,
                data_location: tensor.data_location.replace(DataLocation::External as i32),
                external_data,
            });
            offset += length;
            payloads.push(raw);
        }
        let parts: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let data_path = folder.join(DATA_FILE);
        crate::atomic::write_parts(&data_path, &parts, crate::atomic::Durability::Unflushed)
            .map_err(write_error(data_path.clone()))?;
        let mut hasher = blake3::Hasher::new();
        parts.iter().for_each(|part| {
            hasher.update(part);
        });
        let data_digest = hasher.finalize();
        drop(parts);
        drop(payloads);
        let encoded = proto.encode_to_vec();
        drop(proto);
        let model_path = folder.join(MODEL_FILE);
        crate::atomic::write_parts(
            &model_path,
            &[&encoded],
            crate::atomic::Durability::Unflushed,
        )
        .map_err(write_error(model_path.clone()))?;
        Ok(SetAside {
            folder: folder.to_owned(),
            origin,
            moved,
            model_digest: blake3::hash(&encoded),
            data_digest,
        })
    }
}

impl SetAside {
    /// The ONNX file holding the model, its weights as external data beside it.
    pub fn runtime_model(&self) -> PathBuf {
        self.folder.join(MODEL_FILE)
    }

    /// Reads the model back: equal to the one set aside, its payloads sharing one buffer.
    pub fn restore(self) -> Result<OnnxModel, OnnxError> {
        let read = |name: &str, digest: &blake3::Hash| {
            let path = self.folder.join(name);
            let bytes = std::fs::read(&path).map_err(|source| OnnxError::Read {
                path: path.clone(),
                source,
            })?;
            if blake3::hash(&bytes) != *digest {
                return Err(self.changed());
            }
            Ok(bytes::Bytes::from(bytes))
        };
        let encoded = read(MODEL_FILE, &self.model_digest)?;
        let mut proto = ModelProto::decode(encoded).map_err(|_| self.changed())?;
        let data = read(DATA_FILE, &self.data_digest)?;
        let initializers = proto.graph.as_mut().map(|g| &mut g.initializer);
        let Some(initializers) = initializers else {
            return Err(self.changed());
        };
        for moved in self.moved.iter() {
            let tensor = initializers
                .get_mut(moved.initializer)
                .ok_or_else(|| self.changed())?;
            let range = moved.offset..moved.offset + moved.length;
            if range.end > data.len() {
                return Err(self.changed());
            }
            tensor.raw_data = Some(data.slice(range));
            tensor.data_location = moved.data_location;
            tensor.external_data = moved.external_data.clone();
        }
        Ok(OnnxModel {
            proto,
            origin: self.origin,
        })
    }

    fn changed(&self) -> OnnxError {
        OnnxError::SetAsideChanged {
            path: self.origin.clone(),
            folder: self.folder.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{DType, Dim, GraphContents, NodeContents, TensorContents, TensorValues};
    use crate::onnx::{ValueInfo, proto::TensorProto};

    fn model() -> OnnxModel {
        let floats = |name: &str, n: usize| TensorContents {
            name: name.into(),
            dtype: Some(DType::Float32),
            dims: vec![n as u64],
            values: TensorValues::Float((0..n).map(|i| i as f32 * 0.5).collect()),
        };
        let info = |name: &str| ValueInfo {
            name: name.into(),
            dtype: Some(DType::Float32),
            shape: Some(vec![Dim::Fixed(300)]),
        };
        let add = |name: &str, inputs: [&str; 2], output: &str| NodeContents {
            name: name.into(),
            op_type: "Add".into(),
            domain: String::new(),
            inputs: inputs.map(String::from).to_vec(),
            outputs: vec![output.into()],
            attributes: Vec::new(),
        };
        OnnxModel::from_contents(
            &GraphContents {
                ir_version: Some(8),
                opset: Some(13),
                inputs: vec![info("x")],
                outputs: vec![info("z")],
                value_info: Vec::new(),
                // 1200 bytes go out, 4 stay in.
                initializers: vec![floats("big", 300), floats("small", 1)],
                nodes: vec![add("a", ["x", "big"], "y"), add("b", ["y", "small"], "z")],
            },
            Path::new("<test>"),
        )
    }

    fn initializer<'a>(model: &'a ModelProto, name: &str) -> &'a TensorProto {
        let graph = model.graph.as_ref().unwrap();
        graph
            .initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
    }

    #[test]
    fn a_model_comes_back_as_it_went() {
        let dir = tempfile::tempdir().unwrap();
        let original = model();
        let aside = original.clone().set_aside(dir.path()).unwrap();

        let written = std::fs::read(aside.runtime_model()).unwrap();
        let written = ModelProto::decode(&written[..]).unwrap();
        let big = initializer(&written, "big");
        assert!(big.raw_data.is_none());
        assert_eq!(big.data_location, Some(DataLocation::External as i32));
        assert_eq!(
            initializer(&written, "small")
                .raw_data
                .as_ref()
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            std::fs::metadata(dir.path().join(DATA_FILE)).unwrap().len(),
            1200
        );

        let restored = aside.restore().unwrap();
        assert_eq!(restored.proto, original.proto);
        assert_eq!(restored.to_bytes(), original.to_bytes());
    }

    #[test]
    fn a_changed_data_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let aside = model().set_aside(dir.path()).unwrap();
        let data = dir.path().join(DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[7] ^= 1;
        std::fs::write(&data, bytes).unwrap();
        assert!(matches!(
            aside.restore(),
            Err(OnnxError::SetAsideChanged { .. })
        ));
    }
}
