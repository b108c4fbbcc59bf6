// Package compress compresses finished images (raw disks, ISOs) into the
// `.zst` and `.xz` forms served by kiln, streaming and on all cores.
//
// The input is cut into blocks of at most Options.BlockSize (8 MiB for zstd,
// 16 MiB for xz) that
// are compressed independently by Concurrency goroutines and written in
// input order, so memory stays bounded (≈ 2·(Concurrency+1)·BlockSize plus
// one encoder per goroutine) whatever the image size:
//
//   - zstd: one frame per block (github.com/klauspost/compress/zstd
//     EncodeAll, SpeedBetterCompression by default). Concatenated frames are a
//     valid .zst (RFC 8878 §3.1); `zstd -d`/`-t` and every library read them.
//   - xz: one .xz stream with one block per unit, as `xz -T0` writes it. The
//     container (stream header, block headers with both sizes, CRC64 checks,
//     index, footer) is encoded here; github.com/ulikunitz/xz/lzma supplies
//     the raw LZMA2 encoder, which is single-threaded and ~2× slower than
//     liblzma, so 1 MiB segments that zstd's fastest level cannot shrink
//     below 97% (compressed kernels, initramfs, UKIs) are written as
//     uncompressed LZMA2 chunks without running LZMA at all — which is what
//     liblzma ends up emitting for such data too.
//
// Holes: a regular *os.File is read with SEEK_DATA/SEEK_HOLE, so holes are
// not read; all-zero blocks are encoded once per length (zstd) or assembled
// from cached LZMA2 encodings of 4 MiB and 1 MiB of zeros (xz), so a 4 GiB
// mostly-empty disk costs well under a second.
//
// Output goes to an io.Writer the caller owns (a temp file of the asset
// cache, committed only on success); nothing is made visible here.
package compress
