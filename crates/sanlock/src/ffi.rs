//! Raw binding of libsanlock (3.8.x ABI), loaded at run time with `dlopen`.
//!
//! The struct layouts and constants mirror `sanlock.h`, `sanlock_admin.h`, `sanlock_resource.h`,
//! `sanlock_direct.h` and `sanlock_rv.h` of sanlock 3.8.5; the unit tests pin their sizes. Only
//! the functions lvchain uses are looked up. Everything here is `unsafe` to call; the safe layer
//! is [`super::client`].

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

pub const SANLK_NAME_LEN: usize = 48;
pub const SANLK_PATH_LEN: usize = 1024;

pub const SANLK_RES_ALIGN1M: u32 = 0x10;
pub const SANLK_RES_SECTOR512: u32 = 0x100;
pub const SANLK_RES_SECTOR4K: u32 = 0x200;
pub const SANLK_RES_SHARED: u32 = 0x4;
pub const SANLK_LSF_ALIGN1M: u32 = 0x10;
pub const SANLK_LSF_SECTOR512: u32 = 0x100;
pub const SANLK_LSF_SECTOR4K: u32 = 0x200;

pub const SANLK_ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
pub const SANLK_REM_UNUSED: u32 = 0x2;

pub const SANLK_HOST_UNKNOWN: u32 = 1;
pub const SANLK_HOST_FREE: u32 = 2;
pub const SANLK_HOST_LIVE: u32 = 3;
pub const SANLK_HOST_FAIL: u32 = 4;
pub const SANLK_HOST_DEAD: u32 = 5;
pub const SANLK_HOST_MASK: u32 = 0xF;

// sanlock_rv.h
pub const SANLK_ERROR: c_int = -201;
pub const SANLK_AIO_TIMEOUT: c_int = -202;
pub const SANLK_WD_ERROR: c_int = -203;
pub const SANLK_DBLOCK_READ: c_int = -210;
pub const SANLK_DBLOCK_WRITE: c_int = -211;
pub const SANLK_DBLOCK_LVER: c_int = -212;
pub const SANLK_DBLOCK_MBAL: c_int = -213;
pub const SANLK_DBLOCK_CHECKSUM: c_int = -214;
pub const SANLK_LEADER_READ: c_int = -220;
pub const SANLK_LEADER_WRITE: c_int = -221;
pub const SANLK_LEADER_DIFF: c_int = -222;
pub const SANLK_LEADER_MAGIC: c_int = -223;
pub const SANLK_LEADER_VERSION: c_int = -224;
pub const SANLK_LEADER_SECTORSIZE: c_int = -225;
pub const SANLK_LEADER_LOCKSPACE: c_int = -226;
pub const SANLK_LEADER_RESOURCE: c_int = -227;
pub const SANLK_LEADER_NUMHOSTS: c_int = -228;
pub const SANLK_LEADER_CHECKSUM: c_int = -229;
pub const SANLK_ADDLS_SIZES: c_int = -230;
pub const SANLK_ADDLS_INVALID_HOSTID: c_int = -231;
pub const SANLK_ACQUIRE_LVER: c_int = -240;
pub const SANLK_ACQUIRE_LOCKSPACE: c_int = -241;
pub const SANLK_ACQUIRE_IDDISK: c_int = -242;
pub const SANLK_ACQUIRE_IDLIVE: c_int = -243;
pub const SANLK_ACQUIRE_OWNED: c_int = -244;
pub const SANLK_ACQUIRE_OTHER: c_int = -245;
pub const SANLK_ACQUIRE_SHRETRY: c_int = -246;
pub const SANLK_ACQUIRE_OWNED_RETRY: c_int = -247;
pub const SANLK_RELEASE_LVER: c_int = -250;
pub const SANLK_RELEASE_OWNER: c_int = -251;
pub const SANLK_RENEW_OWNER: c_int = -260;
pub const SANLK_RENEW_DIFF: c_int = -261;
pub const SANLK_HOSTID_BUSY: c_int = -262;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkDisk {
    pub path: [c_char; SANLK_PATH_LEN],
    pub offset: u64,
    pub pad1: u32,
    pub pad2: u32,
}

/// `struct sanlk_resource` followed by exactly one `struct sanlk_disk` (its flexible array).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkResource1 {
    pub lockspace_name: [c_char; SANLK_NAME_LEN],
    pub name: [c_char; SANLK_NAME_LEN],
    pub lver: u64,
    pub data64: u64,
    pub data32: u32,
    pub unused: u32,
    pub flags: u32,
    pub num_disks: u32,
    pub disk: SanlkDisk,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SanlkLockspace {
    pub name: [c_char; SANLK_NAME_LEN],
    pub host_id: u64,
    pub flags: u32,
    pub host_id_disk: SanlkDisk,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SanlkHost {
    pub host_id: u64,
    pub generation: u64,
    pub timestamp: u64,
    pub io_timeout: u32,
    pub flags: u32,
}

impl SanlkDisk {
    pub fn zeroed() -> Self {
        SanlkDisk {
            path: [0; SANLK_PATH_LEN],
            offset: 0,
            pad1: 0,
            pad2: 0,
        }
    }
}

type FnVoidInt = unsafe extern "C" fn() -> c_int;
type FnAcqRel =
    unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut SanlkResource1, *mut c_void) -> c_int;
type FnRelease = unsafe extern "C" fn(c_int, c_int, u32, c_int, *mut *mut SanlkResource1) -> c_int;
type FnLs = unsafe extern "C" fn(*mut SanlkLockspace, u32) -> c_int;
type FnAddLsTimeout = unsafe extern "C" fn(*mut SanlkLockspace, u32, u32) -> c_int;
type FnGetHosts =
    unsafe extern "C" fn(*const c_char, u64, *mut *mut SanlkHost, *mut c_int, u32) -> c_int;
type FnReadOwners =
    unsafe extern "C" fn(*mut SanlkResource1, u32, *mut *mut SanlkHost, *mut c_int) -> c_int;
type FnWriteLs = unsafe extern "C" fn(*mut SanlkLockspace, c_int, u32, u32) -> c_int;
type FnWriteRes = unsafe extern "C" fn(*mut SanlkResource1, c_int, c_int, u32) -> c_int;
type FnReadRes = unsafe extern "C" fn(*mut SanlkResource1, u32) -> c_int;
type FnInquire = unsafe extern "C" fn(c_int, c_int, u32, *mut c_int, *mut *mut c_char) -> c_int;
type FnRestrict = unsafe extern "C" fn(c_int, u32) -> c_int;
type FnStrerror = unsafe extern "C" fn(c_int) -> *const c_char;

/// The libsanlock entry points lvchain uses.
pub struct Lib {
    pub register: FnVoidInt,
    pub restrict: FnRestrict,
    pub acquire: FnAcqRel,
    pub release: FnRelease,
    pub inquire: FnInquire,
    pub add_lockspace_timeout: FnAddLsTimeout,
    pub inq_lockspace: FnLs,
    pub rem_lockspace: FnLs,
    pub get_hosts: FnGetHosts,
    pub read_resource: FnReadRes,
    pub read_resource_owners: FnReadOwners,
    pub write_lockspace: FnWriteLs,
    pub write_resource: FnWriteRes,
    pub direct_write_lockspace: FnWriteLs,
    pub direct_write_resource: FnWriteRes,
    pub strerror: FnStrerror,
}

/// The file name of the library: its SONAME, so no `-dev` package is needed.
pub const LIBRARY: &str = "libsanlock.so.1";

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

/// The loaded library, or why it could not be loaded (kept for the life of the process).
pub fn lib() -> Result<&'static Lib, String> {
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn dlerror_text() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn load() -> Result<Lib, String> {
    let name = b"libsanlock.so.1\0";
    // SAFETY: a valid NUL-terminated file name; the handle is never closed (the library stays
    // loaded for the life of the process, so the function pointers below stay valid).
    let handle = unsafe { libc::dlopen(name.as_ptr().cast(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(format!("cannot load {LIBRARY}: {}", dlerror_text()));
    }
    macro_rules! sym {
        ($name:literal, $ty:ty) => {{
            // SAFETY: handle is a live dlopen handle and the name is NUL-terminated.
            let p = unsafe { libc::dlsym(handle, concat!($name, "\0").as_ptr().cast()) };
            if p.is_null() {
                return Err(format!(
                    "{LIBRARY} has no symbol {}: {}",
                    $name,
                    dlerror_text()
                ));
            }
            // SAFETY: the symbol is the C function declared in the sanlock headers with exactly
            // this signature (see the type aliases above).
            unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
        }};
    }
    Ok(Lib {
        register: sym!("sanlock_register", FnVoidInt),
        restrict: sym!("sanlock_restrict", FnRestrict),
        acquire: sym!("sanlock_acquire", FnAcqRel),
        release: sym!("sanlock_release", FnRelease),
        inquire: sym!("sanlock_inquire", FnInquire),
        add_lockspace_timeout: sym!("sanlock_add_lockspace_timeout", FnAddLsTimeout),
        inq_lockspace: sym!("sanlock_inq_lockspace", FnLs),
        rem_lockspace: sym!("sanlock_rem_lockspace", FnLs),
        get_hosts: sym!("sanlock_get_hosts", FnGetHosts),
        read_resource: sym!("sanlock_read_resource", FnReadRes),
        read_resource_owners: sym!("sanlock_read_resource_owners", FnReadOwners),
        write_lockspace: sym!("sanlock_write_lockspace", FnWriteLs),
        write_resource: sym!("sanlock_write_resource", FnWriteRes),
        direct_write_lockspace: sym!("sanlock_direct_write_lockspace", FnWriteLs),
        direct_write_resource: sym!("sanlock_direct_write_resource", FnWriteRes),
        strerror: sym!("sanlock_strerror", FnStrerror),
    })
}

/// sanlock's own text for a return value (it knows both `-errno` and `SANLK_*` values).
pub fn strerror(rv: c_int) -> String {
    match lib() {
        Ok(l) => {
            // SAFETY: sanlock_strerror returns a pointer to a static string (or NULL).
            let p = unsafe { (l.strerror)(rv) };
            let text = if p.is_null() {
                String::new()
            } else {
                // SAFETY: non-null static NUL-terminated string.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            };
            // sanlock_strerror knows only SANLK_* values; plain -errno gets the libc text.
            if (text.is_empty() || text == "Unknown error") && rv < 0 && rv > -200 {
                std::io::Error::from_raw_os_error(-rv).to_string()
            } else if text.is_empty() {
                format!("error {rv}")
            } else {
                text
            }
        }
        Err(_) if rv < 0 && rv > -200 => std::io::Error::from_raw_os_error(-rv).to_string(),
        Err(_) => format!("error {rv}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{size_of, MaybeUninit};

    /// `offset_of!` without needing Rust 1.77 (the crate's MSRV is 1.75).
    macro_rules! off {
        ($t:ty, $f:ident) => {{
            let u = MaybeUninit::<$t>::uninit();
            let base = u.as_ptr();
            // SAFETY: only the address of the field is taken, nothing is read.
            let field = unsafe { std::ptr::addr_of!((*base).$f) };
            field as usize - base as usize
        }};
    }

    #[test]
    fn layouts_match_the_c_headers() {
        assert_eq!(size_of::<SanlkDisk>(), 1040);
        assert_eq!(off!(SanlkResource1, lver), 96);
        assert_eq!(off!(SanlkResource1, flags), 120);
        assert_eq!(off!(SanlkResource1, num_disks), 124);
        assert_eq!(off!(SanlkResource1, disk), 128);
        assert_eq!(off!(SanlkLockspace, host_id), 48);
        assert_eq!(off!(SanlkLockspace, flags), 56);
        assert_eq!(off!(SanlkLockspace, host_id_disk), 64);
        assert_eq!(size_of::<SanlkHost>(), 32);
    }
}
