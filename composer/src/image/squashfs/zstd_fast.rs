//! One-shot zstd block compression on the fastest build this CPU runs:
//! zstd-sys's own, or the second copy `build.rs` compiles with LZCNT, BMI1
//! and BMI2 (why: see there). Both are the same zstd version fed the same
//! parameters, so they make the same bytes; the test below holds them to
//! it.

/// A compression context at one level, on whichever build suits the CPU.
pub(super) enum Context {
    Baseline(Box<zstd::bulk::Compressor<'static>>),
    #[cfg(pak_zstd_lzcnt)]
    Lzcnt(lzcnt::Cctx),
}

impl Context {
    pub(super) fn new(level: i32) -> Context {
        #[cfg(pak_zstd_lzcnt)]
        if lzcnt::usable() {
            return Context::Lzcnt(lzcnt::Cctx::new(level));
        }
        Context::baseline(level)
    }

    fn baseline(level: i32) -> Context {
        Context::Baseline(Box::new(
            zstd::bulk::Compressor::new(level).expect("zstd context"),
        ))
    }

    /// Whether this is the copy built for LZCNT.
    #[cfg(test)]
    pub(super) fn lzcnt(&self) -> bool {
        match self {
            Context::Baseline(_) => false,
            #[cfg(pak_zstd_lzcnt)]
            Context::Lzcnt(_) => true,
        }
    }

    /// `data` as one zstd frame. Memory aside, compressing a buffer whose
    /// bound is allocated first cannot fail.
    pub(super) fn compress(&mut self, data: &[u8]) -> Vec<u8> {
        match self {
            Context::Baseline(c) => c.compress(data).expect("zstd compresses"),
            #[cfg(pak_zstd_lzcnt)]
            Context::Lzcnt(c) => c.compress(data),
        }
    }
}

#[cfg(pak_zstd_lzcnt)]
mod lzcnt {
    //! The renamed copy's few entry points pak calls.

    use std::ffi::c_void;

    unsafe extern "C" {
        fn pak_lzcnt_ZSTD_createCCtx() -> *mut c_void;
        fn pak_lzcnt_ZSTD_freeCCtx(cctx: *mut c_void) -> usize;
        fn pak_lzcnt_ZSTD_compressBound(size: usize) -> usize;
        fn pak_lzcnt_ZSTD_compressCCtx(
            cctx: *mut c_void,
            dst: *mut c_void,
            dst_capacity: usize,
            src: *const c_void,
            src_size: usize,
            level: i32,
        ) -> usize;
    }

    /// Whether this CPU runs the copy built for LZCNT, BMI1 and BMI2.
    /// `PAK_ZSTD_BASELINE` set forces the baseline build (to compare).
    pub(super) fn usable() -> bool {
        static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *USABLE.get_or_init(|| {
            std::env::var_os("PAK_ZSTD_BASELINE").is_none()
                && std::arch::is_x86_feature_detected!("lzcnt")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
        })
    }

    pub(in super::super) struct Cctx {
        ptr: std::ptr::NonNull<c_void>,
        level: i32,
    }

    // A zstd context is plain memory owned by one holder at a time.
    unsafe impl Send for Cctx {}

    impl Cctx {
        pub(super) fn new(level: i32) -> Cctx {
            // SAFETY: no arguments; a null return is handled.
            let ptr = unsafe { pak_lzcnt_ZSTD_createCCtx() };
            Cctx {
                ptr: std::ptr::NonNull::new(ptr).expect("zstd context: out of memory"),
                level,
            }
        }

        pub(super) fn compress(&mut self, data: &[u8]) -> Vec<u8> {
            // SAFETY: a pure function of its argument.
            let bound = unsafe { pak_lzcnt_ZSTD_compressBound(data.len()) };
            let mut out = Vec::<u8>::with_capacity(bound);
            // SAFETY: `out` has `bound` bytes of room, `data` is readable
            // for its length, the context is ours alone (`&mut self`).
            let n = unsafe {
                pak_lzcnt_ZSTD_compressCCtx(
                    self.ptr.as_ptr(),
                    out.as_mut_ptr().cast(),
                    bound,
                    data.as_ptr().cast(),
                    data.len(),
                    self.level,
                )
            };
            // An error is a code near usize::MAX, past any size; with the
            // bound as room only running out of memory makes one.
            assert!(n <= bound, "zstd failed compressing a block in memory");
            // SAFETY: zstd wrote `n` bytes, n <= bound.
            unsafe { out.set_len(n) };
            out
        }
    }

    impl Drop for Cctx {
        fn drop(&mut self) {
            // SAFETY: made by createCCtx, freed once.
            unsafe { pak_lzcnt_ZSTD_freeCCtx(self.ptr.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks like a generation's: code-like text, repeats, noise, zeros,
    /// tiny and full-size, at the levels pak uses.
    fn blocks() -> Vec<Vec<u8>> {
        let mut noise = 0x2545_f491u32;
        let mut next = move || {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            noise
        };
        let mut out = vec![vec![], vec![0; 131072], b"x".to_vec()];
        for len in [17usize, 4096, 65_537, 131_072] {
            let text: Vec<u8> = (0..len)
                .map(|i| b"fn main() { let x = 42; }\n"[i % 26] ^ ((i / 977) as u8 & 3))
                .collect();
            out.push(text);
            out.push((0..len).map(|_| next() as u8).collect());
            // Mostly structure with sparse noise: long matches of many
            // lengths and offsets, where the optimal parser works hardest.
            out.push(
                (0..len)
                    .map(|i| {
                        if next() % 13 == 0 {
                            next() as u8
                        } else {
                            (i % 251) as u8
                        }
                    })
                    .collect(),
            );
        }
        out
    }

    #[test]
    fn both_builds_make_the_same_bytes() {
        #[cfg(pak_zstd_lzcnt)]
        if !lzcnt::usable() {
            eprintln!("this CPU lacks LZCNT/BMI: only the baseline build is checked");
        }
        for level in [3, 15, 19] {
            let mut fast = Context::new(level);
            let mut base = Context::baseline(level);
            for b in blocks() {
                let (f, r) = (fast.compress(&b), base.compress(&b));
                assert!(f == r, "level {level}, {} bytes: builds differ", b.len());
                assert_eq!(zstd::bulk::decompress(&f, b.len().max(1)).unwrap(), b);
            }
        }
    }

    /// On a CPU that has LZCNT, the fast build is the one pak uses: a
    /// build script that silently stopped building it would fail here.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn the_lzcnt_build_is_used_where_the_cpu_has_it() {
        let has = std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2");
        if !has || std::env::var_os("PAK_ZSTD_BASELINE").is_some() {
            return;
        }
        assert!(
            Context::new(15).lzcnt(),
            "built without the LZCNT copy: see the build script's warning"
        );
    }
}
