//! The gRPC codec of every generated client and server (`build.rs` names it):
//! prost's, with smaller buffers.
//!
//! tonic gives each call an 8 KiB buffer to decode its request into and
//! another to encode its response into. etcd's messages are mostly far
//! smaller (a range request is a few dozen bytes, a put's response a few
//! dozen more), and two 8 KiB blocks allocated and freed per call were a
//! visible cost in the members' profile: too large for glibc's per-thread
//! cache, each free merged with its free neighbours and then swept the
//! allocator's small-block lists (`malloc_consolidate`). A 1 KiB buffer is
//! served from that cache; a larger message makes its buffer grow as before,
//! so nothing else changes.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The buffer each call starts with, in each direction. glibc's per-thread
/// cache takes blocks of up to 1032 bytes.
const BUFFER_SIZE: usize = 1024;

/// How much a streaming encoder writes before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's codec with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
