//! `stockade-sftp`: a jail's SFTP server, protocol version 3 as OpenSSH's
//! `sftp-server` speaks it, with the OpenSSH extensions its client uses.
//!
//! The engine runs this same program inside a running jail (in its
//! namespaces and cgroup, with its capabilities and system call filter)
//! under the name `stockade-sftp`, stdin and stdout connected to the node's
//! SSH gateway. So it confines no path itself: every path is the kernel's to
//! resolve, against the jail's root and the working folder, as for any
//! program the customer runs there. It serves one session and ends with
//! status 0 when its input ends, or 1 after a protocol violation (a packet
//! too long or empty, a request before INIT or without an id, input cut
//! inside a packet) or a failed read or write of its pipes, which it
//! explains in one line on stderr (the engine logs it).
//!
//! Single-threaded and blocking: one client, requests answered in order.
//! Clients pipeline (OpenSSH's keeps 64 reads or writes in flight), so the
//! input is read in large chunks and replies are buffered, and written out
//! only once no complete request is left in the input: a burst of writes
//! is answered in a few system calls, not one per request. A WRITE's data
//! goes to the file straight from the input buffer and a READ's data is
//! read straight into the output buffer; neither is copied in between.
//!
//! Everything is bounded: packets, reads, open handles and buffers. No
//! input can make it panic: a request whose fields do not parse gets
//! BAD_MESSAGE, a broken frame ends the session.

use std::borrow::Cow;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

// Packet types (draft-ietf-secsh-filexfer-02, section 3).
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

// Status codes.
const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;
const FX_FAILURE: u32 = 4;
const FX_BAD_MESSAGE: u32 = 5;
const FX_OP_UNSUPPORTED: u32 = 8;

// OPEN flags.
const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;
const FXF_EXCL: u32 = 0x20;

// Which fields an ATTRS record carries.
const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// The largest packet accepted, not counting its length field: a read or
/// write of [`MAX_DATA`] and room for its header. OpenSSH's client sends
/// at most 256 KiB.
const MAX_PACKET: usize = (256 + 1) << 10;
/// The most data one READ returns (longer requests get this much, which
/// the protocol allows: clients ask again for the rest).
const MAX_DATA: usize = 256 << 10;
/// Open files and folders at once: each holds a descriptor and, for a
/// folder, a listing; a client needs a handful.
const MAX_HANDLES: usize = 256;
/// The input buffer: room for a partial packet and at least one full one,
/// so a packet never needs more than one move to the front.
const IN_BUFFER: usize = 512 << 10;
/// Replies buffered beyond this are written out before the next request
/// (a burst of READs would otherwise pile up their data).
const OUT_FLUSH: usize = 512 << 10;
/// Entries per READDIR reply, as OpenSSH sends.
const READDIR_BATCH: u32 = 100;

/// Extensions announced in VERSION, with their versions (OpenSSH's
/// PROTOCOL file, section 4).
const EXTENSIONS: [(&str, &str); 7] = [
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
];

/// Serves the session on the process's stdin and stdout; its exit status.
/// The descriptors are duplicated into plain files: std's own stdout is
/// line-buffered, which would split binary replies at every newline byte.
pub(crate) fn run() -> i32 {
    let input = io::stdin().as_fd().try_clone_to_owned();
    let output = io::stdout().as_fd().try_clone_to_owned();
    match (input, output) {
        (Ok(input), Ok(output)) => serve(File::from(input), File::from(output)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("stockade-sftp: {e}");
            1
        }
    }
}

/// Serves one session: answers every request read from `input` on
/// `output` until the input ends (0) or breaks the protocol (1).
pub(crate) fn serve(mut input: impl Read, mut output: impl Write) -> i32 {
    let mut server = Server::default();
    let mut buf = vec![0u8; IN_BUFFER];
    // The unprocessed input is buf[start..end].
    let (mut start, mut end) = (0, 0);
    let ended = loop {
        let pending = &buf[start..end];
        if let Some(head) = pending.first_chunk::<4>() {
            let len = usize::try_from(u32::from_be_bytes(*head)).unwrap_or(usize::MAX);
            if len == 0 || len > MAX_PACKET {
                break Err(format!("a packet of {len} bytes (at most {MAX_PACKET})"));
            }
            if let Some(packet) = pending.get(4..4 + len) {
                start += 4 + len;
                if let Err(why) = server.packet(packet) {
                    break Err(why);
                }
                if server.out.buf.len() >= OUT_FLUSH
                    && let Err(e) = server.out.write_to(&mut output)
                {
                    break Err(format!("writing: {e}"));
                }
                continue;
            }
        }
        // No complete request left: answer those read so far, then wait.
        if let Err(e) = server.out.write_to(&mut output) {
            break Err(format!("writing: {e}"));
        }
        if start == end {
            (start, end) = (0, 0);
        } else if buf.len() - end < MAX_PACKET + 4 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        match input.read(&mut buf[end..]) {
            Ok(0) if start == end => break Ok(()),
            Ok(0) => break Err("the input ended inside a packet".to_string()),
            Ok(n) => end += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("reading: {e}")),
        }
    };
    match ended {
        Ok(()) => 0,
        Err(why) => {
            // What was answered before the violation still reaches the
            // client, if it listens.
            let _ = server.out.write_to(&mut output);
            eprintln!("stockade-sftp: {why}");
            1
        }
    }
}

/// The session's state.
#[derive(Default)]
struct Server {
    out: Out,
    handles: Handles,
    /// INIT was received: any other request before it is a violation, as
    /// in OpenSSH.
    initialised: bool,
}

/// How a request that did not fail was answered.
enum Answer {
    /// Its reply is in the output already.
    Sent,
    /// It did what it was asked: STATUS OK.
    Done,
}

impl Server {
    /// Answers one packet (its type and fields); an error is a violation
    /// that ends the session.
    fn packet(&mut self, packet: &[u8]) -> Result<(), String> {
        let mut f = Fields(packet);
        let kind = f.u8().map_err(|_| "an empty packet".to_string())?;
        if kind == FXP_INIT {
            // The client's version: whatever it is, this server speaks 3,
            // as OpenSSH's does; the client decides whether it can.
            f.u32().map_err(|_| "INIT without a version".to_string())?;
            self.version();
            self.initialised = true;
            return Ok(());
        }
        if !self.initialised {
            return Err(format!("request type {kind} before INIT"));
        }
        let id = f
            .u32()
            .map_err(|_| format!("request type {kind} without an id"))?;
        match self.request(kind, id, &mut f) {
            Ok(Answer::Sent) => {}
            Ok(Answer::Done) => self.out.status(id, &Status::new(FX_OK, "Success")),
            Err(status) => self.out.status(id, &status),
        }
        Ok(())
    }

    /// VERSION: this server's version and the extensions it serves.
    fn version(&mut self) {
        let at = self.out.begin(FXP_VERSION);
        self.out.u32(3);
        for (name, version) in EXTENSIONS {
            self.out.bytes(name.as_bytes());
            self.out.bytes(version.as_bytes());
        }
        self.out.end(at);
    }

    /// Carries out one request. Every field is parsed before anything is
    /// done, so a malformed request changes nothing.
    fn request(&mut self, kind: u8, id: u32, f: &mut Fields) -> Result<Answer, Status> {
        match kind {
            FXP_OPEN => self.open(id, f),
            FXP_CLOSE => {
                let handle = f.string()?;
                self.handles.remove(handle)?.close()?;
                Ok(Answer::Done)
            }
            FXP_READ => self.read(id, f),
            FXP_WRITE => {
                let (handle, offset, data) = (f.string()?, f.u64()?, f.string()?);
                // With O_APPEND, Linux appends whatever the offset, as
                // OpenSSH's server does by not seeking.
                self.handles.file(handle)?.write_all_at(data, offset)?;
                Ok(Answer::Done)
            }
            FXP_LSTAT => {
                let meta = fs::symlink_metadata(f.path()?)?;
                Ok(self.out.attrs(id, &meta))
            }
            FXP_STAT => {
                let meta = fs::metadata(f.path()?)?;
                Ok(self.out.attrs(id, &meta))
            }
            FXP_FSTAT => {
                let meta = self.handles.file(f.string()?)?.metadata()?;
                Ok(self.out.attrs(id, &meta))
            }
            FXP_SETSTAT => {
                let (path, attrs) = (f.path()?, f.attrs()?);
                set_path(path, &attrs, true)?;
                Ok(Answer::Done)
            }
            FXP_FSETSTAT => {
                let (handle, attrs) = (f.string()?, f.attrs()?);
                set_file(self.handles.file(handle)?, &attrs)?;
                Ok(Answer::Done)
            }
            FXP_OPENDIR => {
                let path = f.path()?;
                self.handles.room()?;
                let listing = Listing::new(path, fs::read_dir(path)?);
                let handle = self.handles.insert(Open::Dir(Box::new(listing)));
                Ok(self.out.handle(id, &handle))
            }
            FXP_READDIR => self.readdir(id, f),
            FXP_REMOVE => {
                fs::remove_file(f.path()?)?;
                Ok(Answer::Done)
            }
            FXP_MKDIR => {
                let (path, attrs) = (f.path()?, f.attrs()?);
                let mode = attrs.perm.map_or(0o755, |p| p & 0o7777);
                fs::DirBuilder::new().mode(mode).create(path)?;
                Ok(Answer::Done)
            }
            FXP_RMDIR => {
                fs::remove_dir(f.path()?)?;
                Ok(Answer::Done)
            }
            FXP_REALPATH => {
                let path = f.path()?;
                let resolved = realpath(path.as_os_str().as_bytes())?;
                Ok(self.out.name(id, &resolved))
            }
            FXP_RENAME => {
                let (from, to) = (f.path()?, f.path()?);
                rename_without_replacing(from, to)?;
                Ok(Answer::Done)
            }
            FXP_READLINK => {
                let target = fs::read_link(f.path()?)?;
                Ok(self.out.name(id, target.as_os_str().as_bytes()))
            }
            FXP_SYMLINK => {
                // OpenSSH's order, which its clients follow: the link's
                // target first, then the new link (the draft says the
                // opposite; see OpenSSH's PROTOCOL, 4.1).
                let (target, link) = (f.path()?, f.path()?);
                std::os::unix::fs::symlink(target, link)?;
                Ok(Answer::Done)
            }
            FXP_EXTENDED => self.extended(id, f),
            _ => Err(Status::new(FX_OP_UNSUPPORTED, "unsupported request")),
        }
    }

    /// OPEN: open(2) with the client's flags and permissions (0644 when
    /// none, the umask applying either way); a handle to the file.
    fn open(&mut self, id: u32, f: &mut Fields) -> Result<Answer, Status> {
        let (path, pflags, attrs) = (f.path()?, f.u32()?, f.attrs()?);
        // Refused before the open, which may create or truncate.
        self.handles.room()?;
        let mut options = OpenOptions::new();
        match (pflags & FXF_READ != 0, pflags & FXF_WRITE != 0) {
            (true, true) => options.read(true).write(true),
            (false, true) => options.write(true),
            // Neither is O_RDONLY, as in OpenSSH.
            _ => options.read(true),
        };
        // As flags of their own: std refuses creating without write
        // access, which open(2) (and so OpenSSH) allows.
        let mut flags = libc::O_NOCTTY;
        for (fxf, o) in [
            (FXF_APPEND, libc::O_APPEND),
            (FXF_CREAT, libc::O_CREAT),
            (FXF_TRUNC, libc::O_TRUNC),
            (FXF_EXCL, libc::O_EXCL),
        ] {
            if pflags & fxf != 0 {
                flags |= o;
            }
        }
        let mode = attrs.perm.map_or(0o644, |p| p & 0o7777);
        let file = options.custom_flags(flags).mode(mode).open(path)?;
        let handle = self.handles.insert(Open::File(file));
        Ok(self.out.handle(id, &handle))
    }

    /// READ: DATA of at most [`MAX_DATA`] bytes at the offset, or EOF.
    fn read(&mut self, id: u32, f: &mut Fields) -> Result<Answer, Status> {
        let (handle, offset, len) = (f.string()?, f.u64()?, f.u32()?);
        let file = self.handles.file(handle)?;
        let len = usize::try_from(len).map_or(MAX_DATA, |l| l.min(MAX_DATA));
        // Read straight into the reply: DATA, id, then the data's length.
        let out = &mut self.out.buf;
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        out.push(FXP_DATA);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        let data = out.len();
        out.resize(data + len, 0);
        let read = loop {
            match file.read_at(&mut out[data..], offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                read => break read,
            }
        };
        match read {
            Ok(0) if len > 0 => {
                out.truncate(at);
                Err(Status::new(FX_EOF, "End of file"))
            }
            Ok(n) => {
                out.truncate(data + n);
                let n = u32::try_from(n).unwrap_or(0);
                out[data - 4..data].copy_from_slice(&n.to_be_bytes());
                self.out.end(at);
                Ok(Answer::Sent)
            }
            Err(e) => {
                out.truncate(at);
                Err(e.into())
            }
        }
    }

    /// READDIR: the folder's next entries, up to [`READDIR_BATCH`], each
    /// with its long name and attributes; EOF once all were sent.
    fn readdir(&mut self, id: u32, f: &mut Fields) -> Result<Answer, Status> {
        let Open::Dir(listing) = self.handles.get(f.string()?)? else {
            return Err(Status::invalid_handle());
        };
        let out = &mut self.out;
        let now = unix_now();
        let at = out.begin(FXP_NAME);
        out.u32(id);
        let count_at = out.buf.len();
        out.u32(0);
        let mut count = 0;
        while count < READDIR_BATCH {
            match listing.next() {
                None => break,
                Some(Ok((name, meta))) => {
                    out.bytes(name.as_bytes());
                    out.bytes(&longname(name.as_bytes(), &meta, now));
                    out.meta(&meta);
                    count += 1;
                }
                Some(Err(e)) if count == 0 => {
                    out.buf.truncate(at);
                    return Err(e.into());
                }
                Some(Err(e)) => {
                    // Sent with the next READDIR, after these entries.
                    listing.failed = Some(e);
                    break;
                }
            }
        }
        if count == 0 {
            out.buf.truncate(at);
            return Err(Status::new(FX_EOF, "End of file"));
        }
        out.buf[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
        out.end(at);
        Ok(Answer::Sent)
    }

    /// EXTENDED: OpenSSH's extensions, in the formats of its PROTOCOL
    /// file; any other is OP_UNSUPPORTED, which the client then does
    /// without.
    fn extended(&mut self, id: u32, f: &mut Fields) -> Result<Answer, Status> {
        match f.string()? {
            b"posix-rename@openssh.com" => {
                let (from, to) = (f.path()?, f.path()?);
                fs::rename(from, to)?;
                Ok(Answer::Done)
            }
            b"statvfs@openssh.com" => {
                let path = cpath(f.path()?)?;
                let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
                // SAFETY: reads a NUL-terminated path; fills the record on
                // success.
                cvt(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) })?;
                // SAFETY: filled by the successful call above.
                Ok(self.out.statvfs(id, unsafe { st.assume_init_ref() }))
            }
            b"fstatvfs@openssh.com" => {
                let file = self.handles.file(f.string()?)?;
                let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
                // SAFETY: fills the record on success; the descriptor is
                // the open file's.
                cvt(unsafe { libc::fstatvfs(file.as_raw_fd(), st.as_mut_ptr()) })?;
                // SAFETY: filled by the successful call above.
                Ok(self.out.statvfs(id, unsafe { st.assume_init_ref() }))
            }
            b"hardlink@openssh.com" => {
                let (from, to) = (f.path()?, f.path()?);
                fs::hard_link(from, to)?;
                Ok(Answer::Done)
            }
            b"fsync@openssh.com" => {
                self.handles.file(f.string()?)?.sync_all()?;
                Ok(Answer::Done)
            }
            b"lsetstat@openssh.com" => {
                let (path, attrs) = (f.path()?, f.attrs()?);
                if attrs.size.is_some() {
                    // A link has no size to set; OpenSSH refuses it so.
                    return Err(Status::new(FX_BAD_MESSAGE, "a link's size cannot be set"));
                }
                set_path(path, &attrs, false)?;
                Ok(Answer::Done)
            }
            b"limits@openssh.com" => {
                let at = self.out.begin(FXP_EXTENDED_REPLY);
                self.out.u32(id);
                for limit in [MAX_PACKET, MAX_DATA, MAX_DATA, MAX_HANDLES] {
                    self.out.u64(limit as u64);
                }
                self.out.end(at);
                Ok(Answer::Sent)
            }
            _ => Err(Status::new(FX_OP_UNSUPPORTED, "unsupported extension")),
        }
    }
}

/// A request's fields, read in order; one missing or cut short makes the
/// request malformed.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// The next `N` bytes.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Status> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or_else(Status::bad)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, Status> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Status> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, Status> {
        self.array().map(u64::from_be_bytes)
    }

    /// A string: its bytes, borrowed from the packet.
    fn string(&mut self) -> Result<&'a [u8], Status> {
        let len = usize::try_from(self.u32()?).map_err(|_| Status::bad())?;
        let (s, rest) = self.0.split_at_checked(len).ok_or_else(Status::bad)?;
        self.0 = rest;
        Ok(s)
    }

    /// A path as the client sent it. A NUL inside could not reach the
    /// kernel; OpenSSH's server refuses it too.
    fn path(&mut self) -> Result<&'a Path, Status> {
        let s = self.string()?;
        if s.contains(&0) {
            return Err(Status::bad());
        }
        Ok(Path::new(OsStr::from_bytes(s)))
    }

    /// An ATTRS record: flags, then the fields they announce.
    fn attrs(&mut self) -> Result<Attrs, Status> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.perm = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            // Vendor attributes: none is understood, all are skipped. Each
            // takes 8 bytes at least, so a false count ends at the packet's.
            for _ in 0..self.u32()? {
                self.string()?;
                self.string()?;
            }
        }
        Ok(a)
    }
}

/// The attributes a request sets, each if present.
#[derive(Default)]
struct Attrs {
    size: Option<u64>,
    owner: Option<(u32, u32)>,
    perm: Option<u32>,
    /// Access and modification times, in seconds.
    times: Option<(u32, u32)>,
}

/// A STATUS to send: its code and message.
struct Status {
    code: u32,
    message: Cow<'static, str>,
}

impl Status {
    fn new(code: u32, message: &'static str) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn bad() -> Self {
        Self::new(FX_BAD_MESSAGE, "malformed request")
    }

    fn invalid_handle() -> Self {
        Self::new(FX_FAILURE, "invalid handle")
    }
}

impl From<io::Error> for Status {
    /// The codes clients act on (a missing file, a refusal); any other
    /// error is a FAILURE whose message says what it was.
    fn from(e: io::Error) -> Self {
        let code = match e.raw_os_error() {
            Some(libc::ENOENT) => FX_NO_SUCH_FILE,
            Some(libc::EACCES | libc::EPERM) => FX_PERMISSION_DENIED,
            _ => FX_FAILURE,
        };
        let mut message = e.to_string();
        if let Some(i) = message.find(" (os error ") {
            message.truncate(i);
        }
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Replies waiting to be written, each framed as it is made.
#[derive(Default)]
struct Out {
    buf: Vec<u8>,
}

impl Out {
    /// Starts a reply of `kind`; `end` fills in its length.
    fn begin(&mut self, kind: u8) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(kind);
        at
    }

    /// Ends the reply `begin` started at `at`.
    fn end(&mut self, at: usize) {
        let len = u32::try_from(self.buf.len() - at - 4).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// A string: its length, then its bytes.
    fn bytes(&mut self, s: &[u8]) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.buf.extend_from_slice(s);
    }

    fn status(&mut self, id: u32, status: &Status) {
        let at = self.begin(FXP_STATUS);
        self.u32(id);
        self.u32(status.code);
        self.bytes(status.message.as_bytes());
        self.bytes(b""); // language tag
        self.end(at);
    }

    fn handle(&mut self, id: u32, handle: &[u8]) -> Answer {
        let at = self.begin(FXP_HANDLE);
        self.u32(id);
        self.bytes(handle);
        self.end(at);
        Answer::Sent
    }

    /// A NAME reply of one name, as REALPATH and READLINK send it: the
    /// name as its long name too, and no attributes.
    fn name(&mut self, id: u32, name: &[u8]) -> Answer {
        let at = self.begin(FXP_NAME);
        self.u32(id);
        self.u32(1);
        self.bytes(name);
        self.bytes(name);
        self.u32(0);
        self.end(at);
        Answer::Sent
    }

    fn attrs(&mut self, id: u32, meta: &Metadata) -> Answer {
        let at = self.begin(FXP_ATTRS);
        self.u32(id);
        self.meta(meta);
        self.end(at);
        Answer::Sent
    }

    /// An ATTRS record of every field version 3 has. Times are 32-bit
    /// there: those outside 1970-2106 are clamped.
    fn meta(&mut self, meta: &Metadata) {
        let time = |t: i64| u32::try_from(t.clamp(0, i64::from(u32::MAX))).unwrap_or(0);
        self.u32(ATTR_SIZE | ATTR_UIDGID | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        self.u64(meta.size());
        self.u32(meta.uid());
        self.u32(meta.gid());
        self.u32(meta.mode());
        self.u32(time(meta.atime()));
        self.u32(time(meta.mtime()));
    }

    /// The reply to statvfs@openssh.com and fstatvfs@openssh.com: the
    /// record's fields as 64-bit numbers, in statvfs(3)'s order.
    fn statvfs(&mut self, id: u32, st: &libc::statvfs) -> Answer {
        let mut flag = 0;
        if wide(st.f_flag) & wide(libc::ST_RDONLY) != 0 {
            flag |= 0x1; // SSH_FXE_STATVFS_ST_RDONLY
        }
        if wide(st.f_flag) & wide(libc::ST_NOSUID) != 0 {
            flag |= 0x2; // SSH_FXE_STATVFS_ST_NOSUID
        }
        let at = self.begin(FXP_EXTENDED_REPLY);
        self.u32(id);
        for v in [
            wide(st.f_bsize),
            wide(st.f_frsize),
            wide(st.f_blocks),
            wide(st.f_bfree),
            wide(st.f_bavail),
            wide(st.f_files),
            wide(st.f_ffree),
            wide(st.f_favail),
            wide(st.f_fsid),
            flag,
            wide(st.f_namemax),
        ] {
            self.u64(v);
        }
        self.end(at);
        Answer::Sent
    }

    /// Writes out every buffered reply.
    fn write_to(&mut self, output: &mut impl Write) -> io::Result<()> {
        if !self.buf.is_empty() {
            output.write_all(&self.buf)?;
            output.flush()?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A value of the C library's unsigned types, whose width varies.
fn wide(v: impl Into<u64>) -> u64 {
    v.into()
}

/// What a handle stands for.
enum Open {
    File(File),
    /// Boxed: a listing is larger than a file and rarer.
    Dir(Box<Listing>),
}

impl Open {
    /// Closes a file reporting close(2)'s error (on some file systems the
    /// last word on whether the data was written), which dropping a `File`
    /// would hide.
    fn close(self) -> io::Result<()> {
        let Open::File(file) = self else {
            return Ok(());
        };
        let fd = file.into_raw_fd();
        // SAFETY: the descriptor was taken out of its `File` above, which
        // no longer owns it; it is closed once.
        let r = unsafe { libc::close(fd) };
        match io::Error::last_os_error() {
            // After EINTR, Linux has closed the descriptor anyway.
            e if r < 0 && e.raw_os_error() != Some(libc::EINTR) => Err(e),
            _ => Ok(()),
        }
    }
}

/// The open handles. A handle is 8 bytes: its slot's index and the slot's
/// generation, which changes at every close, so a handle used after its
/// close (or a forged one) is refused, never taken for another file.
#[derive(Default)]
struct Handles {
    slots: Vec<Slot>,
}

/// A place for a handle, reused once it is closed.
#[derive(Default)]
struct Slot {
    generation: u32,
    open: Option<Open>,
}

impl Handles {
    /// Room for one more handle, checked before anything is opened.
    fn room(&self) -> Result<(), Status> {
        if self.slots.len() < MAX_HANDLES || self.slots.iter().any(|s| s.open.is_none()) {
            Ok(())
        } else {
            Err(Status::new(
                FX_FAILURE,
                "too many open handles (at most 256): close some first",
            ))
        }
    }

    /// Keeps `open`, once `room` said there is room.
    fn insert(&mut self, open: Open) -> [u8; 8] {
        let index = match self.slots.iter().position(|s| s.open.is_none()) {
            Some(i) => i,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.open = Some(open);
        handle_bytes(index, slot.generation)
    }

    /// The slot a handle names, if the handle is current.
    fn slot(&mut self, handle: &[u8]) -> Result<&mut Slot, Status> {
        let handle: [u8; 8] = handle.try_into().map_err(|_| Status::invalid_handle())?;
        let [i0, i1, i2, i3, g0, g1, g2, g3] = handle;
        let index = usize::try_from(u32::from_be_bytes([i0, i1, i2, i3]));
        let generation = u32::from_be_bytes([g0, g1, g2, g3]);
        match index.ok().and_then(|i| self.slots.get_mut(i)) {
            Some(slot) if slot.generation == generation && slot.open.is_some() => Ok(slot),
            _ => Err(Status::invalid_handle()),
        }
    }

    fn get(&mut self, handle: &[u8]) -> Result<&mut Open, Status> {
        self.slot(handle)?
            .open
            .as_mut()
            .ok_or_else(Status::invalid_handle)
    }

    /// An open file's; a folder's handle is refused, as by OpenSSH.
    fn file(&mut self, handle: &[u8]) -> Result<&File, Status> {
        match self.get(handle)? {
            Open::File(file) => Ok(file),
            Open::Dir(_) => Err(Status::invalid_handle()),
        }
    }

    /// Takes a handle's file or folder out for closing; the handle is
    /// invalid from here on.
    fn remove(&mut self, handle: &[u8]) -> Result<Open, Status> {
        let slot = self.slot(handle)?;
        slot.generation = slot.generation.wrapping_add(1);
        slot.open.take().ok_or_else(Status::invalid_handle)
    }
}

/// The handle of a slot in a generation.
fn handle_bytes(index: usize, generation: u32) -> [u8; 8] {
    let mut h = [0; 8];
    h[..4].copy_from_slice(&u32::try_from(index).unwrap_or(u32::MAX).to_be_bytes());
    h[4..].copy_from_slice(&generation.to_be_bytes());
    h
}

/// An open folder being listed.
struct Listing {
    path: PathBuf,
    entries: fs::ReadDir,
    /// How many of "." and ".." were listed: std's listing leaves them
    /// out, OpenSSH's lists them (`ls -la` shows them).
    dots: u8,
    /// An error met after some entries of a batch, for the next READDIR.
    failed: Option<io::Error>,
}

impl Listing {
    fn new(path: &Path, entries: fs::ReadDir) -> Self {
        Self {
            path: path.to_path_buf(),
            entries,
            dots: 0,
            failed: None,
        }
    }

    /// The next entry's name and metadata (not following a link).
    fn next(&mut self) -> Option<io::Result<(OsString, Metadata)>> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        while self.dots < 2 {
            self.dots += 1;
            let (name, path) = if self.dots == 1 {
                (".", self.path.clone())
            } else {
                ("..", self.path.join(".."))
            };
            if let Ok(meta) = fs::metadata(path) {
                return Some(Ok((name.into(), meta)));
            }
        }
        loop {
            let entry = match self.entries.next()? {
                Ok(entry) => entry,
                Err(e) => return Some(Err(e)),
            };
            // An entry removed since it was listed is left out, as
            // OpenSSH does.
            if let Ok(meta) = entry.metadata() {
                return Some(Ok((entry.file_name(), meta)));
            }
        }
    }
}

/// An entry as `ls -l` shows it, in OpenSSH's server's format: mode,
/// links, owner, group, size, date, name. Owners are numbers (a static
/// program reads no user database, and a jail's is the customer's), and
/// dates are UTC (the jail's time zone is not the server's to guess).
fn longname(name: &[u8], meta: &Metadata, now: i64) -> Vec<u8> {
    let mut line = format!(
        "{}  {:>3} {:<8} {:<8} {:>8} {} ",
        mode_string(meta.mode()),
        meta.nlink(),
        meta.uid(),
        meta.gid(),
        meta.size(),
        date(meta.mtime(), now),
    )
    .into_bytes();
    line.extend_from_slice(name);
    line
}

/// A mode as `ls -l` writes it, e.g. `drwxr-xr-x` or `-rwsr-x---`.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFREG => '-',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '?',
    };
    let bit = |b: u32, c: char| if mode & b != 0 { c } else { '-' };
    // Execute, or the set-id or sticky bit shown in its place.
    let exec = |x: u32, special: u32, set: char| match (mode & x != 0, mode & special != 0) {
        (true, true) => set,
        (false, true) => set.to_ascii_uppercase(),
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't'),
    ]
    .into_iter()
    .collect()
}

/// A date as `ls -l` writes it: `Dec  1 12:00` within the last six months,
/// `Dec  1  2020` otherwise (and for dates ahead).
fn date(t: i64, now: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil(t.div_euclid(86_400));
    let month = usize::try_from(month - 1)
        .ok()
        .and_then(|m| MONTHS.get(m))
        .unwrap_or(&"???");
    let secs = t.rem_euclid(86_400);
    if now - 365 * 86_400 / 2 < t && t <= now {
        format!(
            "{month} {day:>2} {:02}:{:02}",
            secs / 3600,
            secs % 3600 / 60
        )
    } else {
        format!("{month} {day:>2}  {year}")
    }
}

/// Year, month (1-12) and day of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Seconds since 1970, for the long names' dates.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The absolute form of `path` as OpenSSH's server computes it: relative
/// to the working folder, without `.` and `..`, symbolic links resolved.
/// Every component must exist but the last (a client asks for the full
/// name of a file it is about to upload).
fn realpath(path: &[u8]) -> io::Result<Vec<u8>> {
    const SYMLOOP_MAX: u32 = 32;
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let (mut resolved, mut left) = match path.strip_prefix(b"/") {
        Some(rest) => (b"/".to_vec(), rest.to_vec()),
        None => (
            std::env::current_dir()?.into_os_string().into_vec(),
            path.to_vec(),
        ),
    };
    let mut links = 0;
    while !left.is_empty() {
        let (token, last) = match left.iter().position(|&b| b == b'/') {
            Some(i) => {
                let rest = left.split_off(i + 1);
                left.pop();
                (std::mem::replace(&mut left, rest), false)
            }
            None => (std::mem::take(&mut left), true),
        };
        if resolved.last() != Some(&b'/') {
            resolved.push(b'/');
        }
        match &token[..] {
            b"" | b"." => continue,
            b".." => {
                strip_last(&mut resolved);
                continue;
            }
            _ => {}
        }
        resolved.extend_from_slice(&token);
        let meta = match fs::symlink_metadata(OsStr::from_bytes(&resolved)) {
            Ok(meta) => meta,
            Err(e) if last && e.raw_os_error() == Some(libc::ENOENT) => return Ok(resolved),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > SYMLOOP_MAX {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let mut target = fs::read_link(OsStr::from_bytes(&resolved))?
                .into_os_string()
                .into_vec();
            if target.first() == Some(&b'/') {
                resolved.truncate(1);
            } else {
                strip_last(&mut resolved);
            }
            // The link's target, then what was left after the link.
            if !last {
                if target.last() != Some(&b'/') {
                    target.push(b'/');
                }
                target.extend_from_slice(&left);
            }
            left = target;
        }
    }
    if resolved.len() > 1 && resolved.last() == Some(&b'/') {
        resolved.pop();
    }
    Ok(resolved)
}

/// Removes the last component of an absolute path, keeping the slash
/// before it: `/a/b/` and `/a/b` become `/a/`; `/` stays.
fn strip_last(path: &mut Vec<u8>) {
    if path.len() > 1 {
        path.pop();
        let keep = path.iter().rposition(|&b| b == b'/').map_or(1, |i| i + 1);
        path.truncate(keep);
    }
}

/// RENAME as version 3 specifies it: refused if the target exists.
/// RENAME_NOREPLACE does it atomically; a file system without it gets
/// OpenSSH's way.
fn rename_without_replacing(from: &Path, to: &Path) -> io::Result<()> {
    let (cfrom, cto) = (cpath(from)?, cpath(to)?);
    // SAFETY: renameat2 reads two NUL-terminated paths, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => rename_by_link(from, to),
        _ => Err(e),
    }
}

/// OpenSSH's RENAME: a regular file is linked to its new name (which fails
/// if that exists) and unlinked from the old; anything else, or a file
/// system without links, is renamed if nothing is in the way (which can
/// race with another process).
fn rename_by_link(from: &Path, to: &Path) -> io::Result<()> {
    if fs::symlink_metadata(from)?.is_file() {
        match fs::hard_link(from, to) {
            Ok(()) => {
                return fs::remove_file(from).inspect_err(|_| {
                    let _ = fs::remove_file(to);
                });
            }
            // EPERM: what Linux's file systems without links answer.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    match fs::symlink_metadata(to) {
        Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => fs::rename(from, to),
        Err(e) => Err(e),
    }
}

/// SETSTAT's changes, in OpenSSH's order (size, mode, times, owner), each
/// tried even if one before failed; the first error is reported. Links
/// are followed unless `follow` is false (lsetstat, which sets no size).
fn set_path(path: &Path, a: &Attrs, follow: bool) -> io::Result<()> {
    let c = cpath(path)?;
    let results = [
        a.size.map(|size| truncate(&c, size)),
        a.perm.map(|perm| {
            if follow {
                fs::set_permissions(path, Permissions::from_mode(perm & 0o7777))
            } else {
                chmod_link(&c, perm & 0o7777)
            }
        }),
        a.times
            .map(|(atime, mtime)| utimens(&c, atime, mtime, follow)),
        a.owner.map(|(uid, gid)| {
            if follow {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
            } else {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            }
        }),
    ];
    first_error(results)
}

/// FSETSTAT's changes, as [`set_path`]'s, on an open file.
fn set_file(file: &File, a: &Attrs) -> io::Result<()> {
    let time = |t: u32| UNIX_EPOCH + Duration::from_secs(u64::from(t));
    let results = [
        a.size.map(|size| file.set_len(size)),
        a.perm
            .map(|perm| file.set_permissions(Permissions::from_mode(perm & 0o7777))),
        a.times.map(|(atime, mtime)| {
            file.set_times(
                FileTimes::new()
                    .set_accessed(time(atime))
                    .set_modified(time(mtime)),
            )
        }),
        a.owner
            .map(|(uid, gid)| std::os::unix::fs::fchown(file, Some(uid), Some(gid))),
    ];
    first_error(results)
}

/// The first error of attribute changes that were each tried.
fn first_error(results: [Option<io::Result<()>>; 4]) -> io::Result<()> {
    match results.into_iter().flatten().find_map(Result::err) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A path for the C library. Paths with a NUL were refused when parsed.
fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A C library call's result: negative is the error in errno.
fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// truncate(2): std can only truncate files it has opened, and opening a
/// FIFO would block the session.
fn truncate(path: &CStr, size: u64) -> io::Result<()> {
    let size = i64::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: reads a NUL-terminated path, alive for the call.
    cvt(unsafe { libc::truncate(path.as_ptr(), size) })
}

/// The mode of a link itself (most file systems refuse: Linux links have
/// no mode of their own; OpenSSH asks the same way).
fn chmod_link(path: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: reads a NUL-terminated path, alive for the call.
    cvt(unsafe {
        libc::fchmodat(
            libc::AT_FDCWD,
            path.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Sets access and modification times by path (std sets them only on
/// open files); of a link itself unless `follow`.
fn utimens(path: &CStr, atime: u32, mtime: u32, follow: bool) -> io::Result<()> {
    let ts = |s: u32| libc::timespec {
        tv_sec: libc::time_t::from(s),
        tv_nsec: 0,
    };
    let times = [ts(atime), ts(mtime)];
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: reads a NUL-terminated path and two timespec records, alive
    // for the call.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), flags) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::thread::JoinHandle;

    /// A folder of its own for one test, removed at the end.
    struct Temp(PathBuf);

    impl Temp {
        fn new() -> Self {
            static COUNT: AtomicU32 = AtomicU32::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = std::env::temp_dir().join(format!(
                "stockade-sftp-unit-{}-{nanos}-{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            // Compared with REALPATH's answers: no link in the way.
            Self(fs::canonicalize(dir).unwrap())
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// A path inside as a request's bytes.
        fn p(&self, name: &str) -> Vec<u8> {
            self.path(name).into_os_string().into_vec()
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A request being encoded.
    struct Req(Vec<u8>);

    impl Req {
        fn new(kind: u8, id: u32) -> Self {
            let mut body = vec![kind];
            body.extend_from_slice(&id.to_be_bytes());
            Self(body)
        }

        fn ext(name: &str, id: u32) -> Self {
            Self::new(FXP_EXTENDED, id).s(name.as_bytes())
        }

        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn s(self, s: &[u8]) -> Self {
            let mut r = self.u32(u32::try_from(s.len()).unwrap());
            r.0.extend_from_slice(s);
            r
        }

        /// An ATTRS record: flags, then the fields those say.
        fn no_attrs(self) -> Self {
            self.u32(0)
        }

        fn perm(self, perm: u32) -> Self {
            self.u32(ATTR_PERMISSIONS).u32(perm)
        }

        fn framed(self) -> Vec<u8> {
            frame(&self.0)
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut p = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        p.extend_from_slice(body);
        p
    }

    fn init() -> Vec<u8> {
        frame(&[FXP_INIT, 0, 0, 0, 3])
    }

    /// A reply, read field by field.
    #[derive(Debug)]
    struct Reply {
        kind: u8,
        body: Vec<u8>,
        at: usize,
    }

    impl Reply {
        fn take(&mut self, n: usize) -> &[u8] {
            let s = &self.body[self.at..self.at + n];
            self.at += n;
            s
        }

        fn u32(&mut self) -> u32 {
            u32::from_be_bytes(self.take(4).try_into().unwrap())
        }

        fn u64(&mut self) -> u64 {
            u64::from_be_bytes(self.take(8).try_into().unwrap())
        }

        fn s(&mut self) -> Vec<u8> {
            let n = usize::try_from(self.u32()).unwrap();
            self.take(n).to_vec()
        }

        fn done(&self) -> bool {
            self.at == self.body.len()
        }

        /// Decodes an ATTRS record: (size, uid, gid, mode, atime, mtime).
        fn attrs(&mut self) -> [u64; 6] {
            let flags = self.u32();
            assert_eq!(flags, 0xf, "every field of version 3");
            [
                self.u64(),
                self.u32().into(),
                self.u32().into(),
                self.u32().into(),
                self.u32().into(),
                self.u32().into(),
            ]
        }
    }

    /// Splits a stream of replies, which must end on a reply's end.
    fn replies(mut bytes: &[u8]) -> Vec<Reply> {
        let mut all = Vec::new();
        while !bytes.is_empty() {
            let len = usize::try_from(u32::from_be_bytes(bytes[..4].try_into().unwrap())).unwrap();
            all.push(Reply {
                kind: bytes[4],
                body: bytes[5..4 + len].to_vec(),
                at: 0,
            });
            bytes = &bytes[4 + len..];
        }
        all
    }

    /// Runs `serve` over a whole input at once: its status and replies.
    fn run_all(input: &[u8]) -> (i32, Vec<Reply>) {
        let mut out = Vec::new();
        let code = serve(input, &mut out);
        (code, replies(&out))
    }

    /// Input from the test, a chunk at a time, as from a pipe.
    struct ChanReader {
        rx: mpsc::Receiver<Vec<u8>>,
        chunk: Vec<u8>,
        at: usize,
    }

    impl Read for ChanReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.chunk.len() {
                match self.rx.recv() {
                    Ok(chunk) => (self.chunk, self.at) = (chunk, 0),
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Output to the test, sent at every flush.
    struct ChanWriter {
        tx: mpsc::Sender<Vec<u8>>,
        buf: Vec<u8>,
    }

    impl Write for ChanWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.buf.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            let _ = self.tx.send(std::mem::take(&mut self.buf));
            Ok(())
        }
    }

    /// A session on a thread of its own, driven one request at a time
    /// (a request may need a handle an earlier reply gave).
    struct Session {
        tx: Option<mpsc::Sender<Vec<u8>>>,
        rx: mpsc::Receiver<Vec<u8>>,
        received: Vec<u8>,
        server: JoinHandle<i32>,
        id: u32,
    }

    impl Session {
        fn start() -> Self {
            let (tx, input) = mpsc::channel();
            let (output, rx) = mpsc::channel();
            let server = std::thread::spawn(move || {
                serve(
                    ChanReader {
                        rx: input,
                        chunk: Vec::new(),
                        at: 0,
                    },
                    ChanWriter {
                        tx: output,
                        buf: Vec::new(),
                    },
                )
            });
            let mut s = Self {
                tx: Some(tx),
                rx,
                received: Vec::new(),
                server,
                id: 0,
            };
            s.send(init());
            let mut version = s.reply();
            assert_eq!((version.kind, version.u32()), (FXP_VERSION, 3));
            s
        }

        fn send(&mut self, bytes: Vec<u8>) {
            self.tx.as_ref().unwrap().send(bytes).unwrap();
        }

        fn reply(&mut self) -> Reply {
            loop {
                if let Some(head) = self.received.first_chunk::<4>() {
                    let len = usize::try_from(u32::from_be_bytes(*head)).unwrap();
                    if self.received.len() >= 4 + len {
                        let rest = self.received.split_off(4 + len);
                        let packet = std::mem::replace(&mut self.received, rest);
                        return replies(&packet).pop().unwrap();
                    }
                }
                let chunk = self
                    .rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("a reply");
                self.received.extend_from_slice(&chunk);
            }
        }

        /// A new request of `kind` with the next id.
        fn req(&mut self, kind: u8) -> Req {
            self.id += 1;
            Req::new(kind, self.id)
        }

        fn ext(&mut self, name: &str) -> Req {
            self.id += 1;
            Req::ext(name, self.id)
        }

        /// Sends a request; its reply, checked to carry its id.
        fn call(&mut self, req: Req) -> Reply {
            let id = u32::from_be_bytes(req.0[1..5].try_into().unwrap());
            self.send(req.framed());
            let mut reply = self.reply();
            assert_eq!(reply.u32(), id, "the reply's id");
            reply
        }

        /// A request answered with STATUS: its code and message.
        fn status(&mut self, req: Req) -> (u32, String) {
            let mut r = self.call(req);
            assert_eq!(r.kind, FXP_STATUS, "{r:?}");
            let code = r.u32();
            let message = String::from_utf8(r.s()).unwrap();
            assert_eq!(r.s(), b"", "language tag");
            assert!(r.done());
            (code, message)
        }

        fn ok(&mut self, req: Req) {
            assert_eq!(self.status(req), (FX_OK, "Success".to_string()));
        }

        fn close(&mut self, handle: &[u8]) {
            let req = self.req(FXP_CLOSE).s(handle);
            self.ok(req);
        }

        fn handle(&mut self, req: Req) -> Vec<u8> {
            let mut r = self.call(req);
            assert_eq!(r.kind, FXP_HANDLE, "{r:?}");
            r.s()
        }

        fn open(&mut self, path: &[u8], flags: u32) -> Vec<u8> {
            let req = self.req(FXP_OPEN).s(path).u32(flags).no_attrs();
            self.handle(req)
        }

        fn data(&mut self, handle: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, u32> {
            let req = self.req(FXP_READ).s(handle).u64(offset).u32(len);
            let mut r = self.call(req);
            match r.kind {
                FXP_DATA => Ok(r.s()),
                FXP_STATUS => Err(r.u32()),
                k => panic!("reply type {k}"),
            }
        }

        fn attrs(&mut self, req: Req) -> [u64; 6] {
            let mut r = self.call(req);
            assert_eq!(r.kind, FXP_ATTRS, "{r:?}");
            r.attrs()
        }

        /// A NAME reply of one name, as REALPATH's.
        fn name(&mut self, req: Req) -> Result<Vec<u8>, u32> {
            let mut r = self.call(req);
            if r.kind == FXP_STATUS {
                return Err(r.u32());
            }
            assert_eq!((r.kind, r.u32()), (FXP_NAME, 1));
            let name = r.s();
            assert_eq!(r.s(), name);
            assert_eq!(r.u32(), 0, "no attributes");
            Ok(name)
        }

        /// Ends the input; the server's status.
        fn end(mut self) -> i32 {
            self.tx = None;
            self.server.join().unwrap()
        }
    }

    #[test]
    fn init_is_answered_with_version_3_and_the_extensions() {
        let (code, mut replies) = run_all(&init());
        assert_eq!(code, 0);
        assert_eq!(replies.len(), 1);
        let r = &mut replies[0];
        assert_eq!((r.kind, r.u32()), (FXP_VERSION, 3));
        let mut extensions = BTreeMap::new();
        while !r.done() {
            let name = String::from_utf8(r.s()).unwrap();
            extensions.insert(name, String::from_utf8(r.s()).unwrap());
        }
        for (name, version) in [
            ("posix-rename@openssh.com", "1"),
            ("statvfs@openssh.com", "2"),
            ("fstatvfs@openssh.com", "2"),
            ("hardlink@openssh.com", "1"),
            ("fsync@openssh.com", "1"),
            ("lsetstat@openssh.com", "1"),
            ("limits@openssh.com", "1"),
        ] {
            assert_eq!(extensions.get(name).map(String::as_str), Some(version));
        }
    }

    #[test]
    fn written_data_reads_back() {
        let t = Temp::new();
        let mut s = Session::start();
        let file = t.p("f");
        let req = s
            .req(FXP_OPEN)
            .s(&file)
            .u32(FXF_WRITE | FXF_CREAT | FXF_TRUNC)
            .perm(0o600);
        let h = s.handle(req);
        for (offset, data) in [(6, &b"world"[..]), (0, b"hello ")] {
            let req = s.req(FXP_WRITE).s(&h).u64(offset).s(data);
            s.ok(req);
        }
        s.close(&h);
        assert_eq!(fs::read(t.path("f")).unwrap(), b"hello world");
        let mode = fs::metadata(t.path("f")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o600, "the requested permissions");

        let h = s.open(&file, FXF_READ);
        assert_eq!(s.data(&h, 0, 100).unwrap(), b"hello world");
        assert_eq!(s.data(&h, 6, 3).unwrap(), b"wor");
        assert_eq!(s.data(&h, 11, 100), Err(FX_EOF));
        assert_eq!(s.data(&h, 1 << 40, 100), Err(FX_EOF));
        assert_eq!(s.data(&h, 0, 0).unwrap(), b"", "a read of nothing");
        // A file opened to read is not written.
        let req = s.req(FXP_WRITE).s(&h).u64(0).s(b"x");
        assert_eq!(s.status(req).0, FX_FAILURE);
        s.close(&h);

        // Appending ignores the offset.
        let h = s.open(&file, FXF_WRITE | FXF_APPEND);
        let req = s.req(FXP_WRITE).s(&h).u64(0).s(b"!");
        s.ok(req);
        s.close(&h);
        assert_eq!(fs::read(t.path("f")).unwrap(), b"hello world!");

        // EXCL refuses an existing file; a missing one is NO_SUCH_FILE.
        let req = s
            .req(FXP_OPEN)
            .s(&file)
            .u32(FXF_WRITE | FXF_CREAT | FXF_EXCL)
            .no_attrs();
        assert_eq!(s.status(req), (FX_FAILURE, "File exists".to_string()));
        let req = s.req(FXP_OPEN).s(&t.p("none")).u32(FXF_READ).no_attrs();
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        // TRUNC empties.
        let h = s.open(&file, FXF_WRITE | FXF_TRUNC);
        s.close(&h);
        assert_eq!(fs::read(t.path("f")).unwrap(), b"");
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn created_files_and_folders_default_to_0644_and_0755_under_the_umask() {
        let t = Temp::new();
        let mut s = Session::start();
        let h = s.open(&t.p("f"), FXF_WRITE | FXF_CREAT);
        s.close(&h);
        let req = s.req(FXP_MKDIR).s(&t.p("d")).no_attrs();
        s.ok(req);
        let req = s.req(FXP_MKDIR).s(&t.p("e")).perm(0o700);
        s.ok(req);
        let mode = |n| fs::metadata(t.path(n)).unwrap().mode() & 0o7777;
        // Whatever the umask of the tests, no more than asked, and the
        // owner's bits (which no sane umask removes).
        assert_eq!(mode("f") & !0o644, 0);
        assert_eq!(mode("f") & 0o600, 0o600);
        assert_eq!(mode("d") & !0o755, 0);
        assert_eq!(mode("d") & 0o700, 0o700);
        assert_eq!(mode("e"), 0o700);
        assert!(fs::metadata(t.path("d")).unwrap().is_dir());
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn stat_lstat_and_fstat_give_sizes_and_kinds() {
        let t = Temp::new();
        fs::write(t.path("file"), vec![7u8; 1234]).unwrap();
        std::os::unix::fs::symlink("file", t.path("link")).unwrap();
        let mut s = Session::start();
        let uid = fs::metadata(t.path("file")).unwrap().uid();

        let req = s.req(FXP_STAT).s(&t.p("file"));
        let [size, u, _, mode, _, mtime] = s.attrs(req);
        assert_eq!((size, u), (1234, u64::from(uid)));
        assert_eq!(mode & u64::from(libc::S_IFMT), u64::from(libc::S_IFREG));
        let expected = fs::metadata(t.path("file")).unwrap().mtime();
        assert_eq!(i64::try_from(mtime).unwrap(), expected);

        let req = s.req(FXP_LSTAT).s(&t.p("link"));
        let [size, _, _, mode, _, _] = s.attrs(req);
        assert_eq!(size, 4, "the link's own size: its target's length");
        assert_eq!(mode & u64::from(libc::S_IFMT), u64::from(libc::S_IFLNK));
        let req = s.req(FXP_STAT).s(&t.p("link"));
        assert_eq!(s.attrs(req)[0], 1234, "STAT follows the link");

        let h = s.open(&t.p("link"), FXF_READ);
        let req = s.req(FXP_FSTAT).s(&h);
        assert_eq!(s.attrs(req)[0], 1234);
        let req = s.req(FXP_STAT).s(&t.p("none"));
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn readdir_lists_every_entry_in_batches_with_long_names() {
        let t = Temp::new();
        let mut expected: BTreeSet<String> = [".", "..", "sub"].map(String::from).into();
        for i in 0..250 {
            let name = format!("file-{i:03}");
            fs::write(t.path(&name), b"").unwrap();
            expected.insert(name);
        }
        fs::create_dir(t.path("sub")).unwrap();
        fs::write(t.path("file-000"), vec![0u8; 1234]).unwrap();
        fs::set_permissions(t.path("file-000"), Permissions::from_mode(0o644)).unwrap();
        let meta = fs::metadata(t.path("file-000")).unwrap();

        let mut s = Session::start();
        let req = s.req(FXP_OPENDIR).s(&t.p(""));
        let h = s.handle(req);
        let mut names = BTreeSet::new();
        let mut batches = 0;
        loop {
            let req = s.req(FXP_READDIR).s(&h);
            let mut r = s.call(req);
            if r.kind == FXP_STATUS {
                assert_eq!(r.u32(), FX_EOF);
                break;
            }
            assert_eq!(r.kind, FXP_NAME);
            let count = r.u32();
            assert!((1..=100).contains(&count), "{count} entries");
            batches += 1;
            for _ in 0..count {
                let name = String::from_utf8(r.s()).unwrap();
                let long = String::from_utf8(r.s()).unwrap();
                let attrs = r.attrs();
                assert!(long.ends_with(&format!(" {name}")), "{long}");
                if name == "file-000" {
                    assert_eq!(attrs[0], 1234);
                    let head = format!(
                        "-rw-r--r--    1 {:<8} {:<8}     1234 ",
                        meta.uid(),
                        meta.gid()
                    );
                    assert!(long.starts_with(&head), "{long:?} against {head:?}");
                    // `Mon dd hh:mm` (or `Mon dd  yyyy`), then the name.
                    assert_eq!(long.len(), head.len() + 12 + 1 + name.len(), "{long}");
                }
                if name == "sub" || name == "." {
                    assert!(long.starts_with('d'), "{long}");
                }
                assert!(names.insert(name), "listed once");
            }
            assert!(r.done());
        }
        assert_eq!(names, expected);
        assert_eq!(batches, 3, "253 entries in batches of 100");
        let req = s.req(FXP_READDIR).s(&h);
        assert_eq!(s.status(req).0, FX_EOF, "still at the end");
        s.close(&h);
        let req = s.req(FXP_OPENDIR).s(&t.p("file-000"));
        assert_eq!(s.status(req).0, FX_FAILURE, "not a folder");
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn long_names_are_formatted_as_by_ls() {
        assert_eq!(mode_string(0o100_644), "-rw-r--r--");
        assert_eq!(mode_string(0o040_755), "drwxr-xr-x");
        assert_eq!(mode_string(0o041_777), "drwxrwxrwt");
        assert_eq!(mode_string(0o041_776), "drwxrwxrwT");
        assert_eq!(mode_string(0o104_755), "-rwsr-xr-x");
        assert_eq!(mode_string(0o102_644), "-rw-r-Sr--");
        assert_eq!(mode_string(0o120_777), "lrwxrwxrwx");
        assert_eq!(mode_string(0o010_600), "prw-------");
        assert_eq!(mode_string(0o140_600), "srw-------");
        assert_eq!(mode_string(0o020_620), "crw--w----");
        let noon = 1_733_054_400; // 2024-12-01 12:00:00 UTC
        assert_eq!(date(noon, noon + 3600), "Dec  1 12:00");
        assert_eq!(date(noon, noon + 200 * 86_400), "Dec  1  2024", "old");
        assert_eq!(date(noon, noon - 60), "Dec  1  2024", "ahead");
        assert_eq!(date(1_606_824_000, noon), "Dec  1  2020");
        assert_eq!(date(0, noon), "Jan  1  1970");
        assert_eq!(date(951_782_400, noon), "Feb 29  2000", "a leap day");
        assert_eq!(date(-1, noon), "Dec 31  1969");
        assert_eq!(civil(-719_468), (0, 3, 1));
    }

    #[test]
    fn rename_refuses_an_existing_target_and_posix_rename_replaces_it() {
        let t = Temp::new();
        fs::write(t.path("a"), b"A").unwrap();
        fs::write(t.path("b"), b"B").unwrap();
        fs::create_dir(t.path("d")).unwrap();
        let mut s = Session::start();
        let req = s.req(FXP_RENAME).s(&t.p("a")).s(&t.p("b"));
        assert_eq!(s.status(req), (FX_FAILURE, "File exists".to_string()));
        let req = s.req(FXP_RENAME).s(&t.p("d")).s(&t.p("b"));
        assert_eq!(s.status(req).0, FX_FAILURE, "a folder neither");
        assert_eq!(fs::read(t.path("a")).unwrap(), b"A");
        assert_eq!(fs::read(t.path("b")).unwrap(), b"B");

        let req = s.req(FXP_RENAME).s(&t.p("a")).s(&t.p("c"));
        s.ok(req);
        assert!(!t.path("a").exists());
        assert_eq!(fs::read(t.path("c")).unwrap(), b"A");
        let req = s.ext("posix-rename@openssh.com").s(&t.p("c")).s(&t.p("b"));
        s.ok(req);
        assert!(!t.path("c").exists());
        assert_eq!(fs::read(t.path("b")).unwrap(), b"A");
        let req = s.req(FXP_RENAME).s(&t.p("none")).s(&t.p("x"));
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn renaming_by_link_refuses_an_existing_target_too() {
        // The way of file systems without RENAME_NOREPLACE, tested
        // directly since this one has it.
        let t = Temp::new();
        fs::write(t.path("a"), b"A").unwrap();
        fs::write(t.path("b"), b"B").unwrap();
        fs::create_dir(t.path("d")).unwrap();
        let refused = rename_by_link(&t.path("a"), &t.path("b")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        let refused = rename_by_link(&t.path("d"), &t.path("b")).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(fs::read(t.path("b")).unwrap(), b"B");
        rename_by_link(&t.path("a"), &t.path("c")).unwrap();
        rename_by_link(&t.path("d"), &t.path("e")).unwrap();
        assert!(!t.path("a").exists() && !t.path("d").exists());
        assert_eq!(fs::read(t.path("c")).unwrap(), b"A");
        assert!(t.path("e").is_dir());
    }

    #[test]
    fn bad_and_stale_handles_fail_without_ending_the_session() {
        let t = Temp::new();
        fs::write(t.path("f"), b"data").unwrap();
        let mut s = Session::start();
        let invalid = (FX_FAILURE, "invalid handle".to_string());
        for forged in [&b""[..], b"nope", &[0; 8], &[0xff; 8], &[0; 9]] {
            let req = s.req(FXP_READ).s(forged).u64(0).u32(10);
            assert_eq!(s.status(req), invalid);
        }
        let h = s.open(&t.p("f"), FXF_READ);
        s.close(&h);
        let req = s.req(FXP_CLOSE).s(&h);
        assert_eq!(s.status(req), invalid, "closed twice");
        let req = s.req(FXP_READ).s(&h).u64(0).u32(10);
        assert_eq!(s.status(req), invalid, "used after its close");
        let again = s.open(&t.p("f"), FXF_READ);
        assert_ne!(again, h, "the slot's next generation");
        let req = s.req(FXP_FSTAT).s(&h);
        assert_eq!(s.status(req), invalid, "not taken for the new file");
        let req = s.req(FXP_OPENDIR).s(&t.p(""));
        let dir = s.handle(req);
        let req = s.req(FXP_WRITE).s(&dir).u64(0).s(b"x");
        assert_eq!(s.status(req), invalid, "a folder's handle is no file's");
        let req = s.req(FXP_READDIR).s(&again);
        assert_eq!(s.status(req), invalid, "a file's handle is no folder's");
        assert_eq!(s.data(&again, 0, 10).unwrap(), b"data", "still serving");
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn open_handles_are_bounded() {
        let t = Temp::new();
        let mut s = Session::start();
        let mut handles = Vec::new();
        for _ in 0..MAX_HANDLES {
            let req = s.req(FXP_OPENDIR).s(&t.p(""));
            handles.push(s.handle(req));
        }
        let req = s.req(FXP_OPENDIR).s(&t.p(""));
        let (code, message) = s.status(req);
        assert_eq!(code, FX_FAILURE);
        assert!(message.contains("too many open handles"), "{message}");
        // Refused before opening: no file is created.
        let req = s
            .req(FXP_OPEN)
            .s(&t.p("new"))
            .u32(FXF_WRITE | FXF_CREAT)
            .no_attrs();
        assert_eq!(s.status(req).0, FX_FAILURE);
        assert!(!t.path("new").exists());
        s.close(&handles[17]);
        let h = s.open(&t.p("new"), FXF_WRITE | FXF_CREAT);
        assert_eq!(h[..4], 17u32.to_be_bytes(), "the freed slot");
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn an_oversized_or_empty_packet_ends_the_session() {
        for len in [u32::try_from(MAX_PACKET + 1).unwrap(), u32::MAX, 0] {
            let mut input = init();
            input.extend_from_slice(&len.to_be_bytes());
            input.extend_from_slice(&[FXP_STAT, 0, 0, 0, 1]);
            let (code, replies) = run_all(&input);
            assert_eq!(code, 1, "length {len}");
            assert_eq!(replies.len(), 1, "the VERSION, nothing after");
            assert_eq!(replies[0].kind, FXP_VERSION);
        }
        // The largest packet allowed is read (and its forged handle refused).
        let mut input = init();
        let header = 1 + 4 + (4 + 8) + 8 + 4;
        let data = vec![0u8; MAX_PACKET - header];
        let write = Req::new(FXP_WRITE, 9).s(&[1; 8]).u64(0).s(&data).framed();
        assert_eq!(write.len(), MAX_PACKET + 4);
        input.extend_from_slice(&write);
        let (code, mut replies) = run_all(&input);
        assert_eq!(code, 0);
        assert_eq!(replies.len(), 2);
        let r = &mut replies[1];
        assert_eq!((r.kind, r.u32(), r.u32()), (FXP_STATUS, 9, FX_FAILURE));
    }

    #[test]
    fn input_cut_inside_a_packet_ends_the_session() {
        let t = Temp::new();
        let mut input = init();
        let open = Req::new(FXP_OPEN, 1)
            .s(&t.p("f"))
            .u32(FXF_WRITE | FXF_CREAT)
            .no_attrs()
            .framed();
        input.extend_from_slice(&open[..open.len() - 1]);
        let (code, replies) = run_all(&input);
        assert_eq!(code, 1);
        assert_eq!(replies.len(), 1);
        assert!(!t.path("f").exists(), "the cut request was not carried out");
        // A request before INIT, and one without an id.
        let (code, replies) = run_all(&Req::new(FXP_STAT, 1).s(b"/").framed());
        assert_eq!((code, replies.len()), (1, 0));
        let mut input = init();
        input.extend_from_slice(&frame(&[FXP_STAT, 0, 0]));
        assert_eq!(run_all(&input).0, 1);
    }

    #[test]
    fn every_request_cut_short_is_a_bad_message_and_changes_nothing() {
        let t = Temp::new();
        fs::write(t.path("f"), b"data").unwrap();
        let (f, g) = (t.p("f"), t.p("g"));
        let all_attrs = |r: Req| {
            r.u32(0x8000_000f)
                .u64(1)
                .u32(2)
                .u32(3)
                .u32(0o777)
                .u32(5)
                .u32(6)
                .u32(1)
                .s(b"x@y")
                .s(b"z")
        };
        let h = &[0u8; 8][..];
        let requests = [
            all_attrs(Req::new(FXP_OPEN, 1).s(&g).u32(FXF_WRITE | FXF_CREAT)),
            Req::new(FXP_CLOSE, 1).s(h),
            Req::new(FXP_READ, 1).s(h).u64(0).u32(10),
            Req::new(FXP_WRITE, 1).s(h).u64(0).s(b"abc"),
            Req::new(FXP_LSTAT, 1).s(&f),
            Req::new(FXP_FSTAT, 1).s(h),
            all_attrs(Req::new(FXP_SETSTAT, 1).s(&f)),
            all_attrs(Req::new(FXP_FSETSTAT, 1).s(h)),
            Req::new(FXP_OPENDIR, 1).s(&t.p("")),
            Req::new(FXP_READDIR, 1).s(h),
            Req::new(FXP_REMOVE, 1).s(&f),
            all_attrs(Req::new(FXP_MKDIR, 1).s(&g)),
            Req::new(FXP_RMDIR, 1).s(&g),
            Req::new(FXP_REALPATH, 1).s(&f),
            Req::new(FXP_STAT, 1).s(&f),
            Req::new(FXP_RENAME, 1).s(&f).s(&g),
            Req::new(FXP_READLINK, 1).s(&f),
            Req::new(FXP_SYMLINK, 1).s(&f).s(&g),
            Req::ext("posix-rename@openssh.com", 1).s(&f).s(&g),
            Req::ext("statvfs@openssh.com", 1).s(&f),
            Req::ext("fstatvfs@openssh.com", 1).s(h),
            Req::ext("hardlink@openssh.com", 1).s(&f).s(&g),
            Req::ext("fsync@openssh.com", 1).s(h),
            all_attrs(Req::ext("lsetstat@openssh.com", 1).s(&f)),
            Req::ext("limits@openssh.com", 1),
        ];
        let mut input = init();
        let mut sent = 0;
        for req in &requests {
            for cut in 5..req.0.len() {
                input.extend_from_slice(&frame(&req.0[..cut]));
                sent += 1;
            }
        }
        // A path with a NUL inside is malformed too.
        input.extend_from_slice(&Req::new(FXP_REMOVE, 1).s(b"f\0g").framed());
        sent += 1;
        let (code, replies) = run_all(&input);
        assert_eq!(code, 0);
        assert_eq!(replies.len(), sent + 1);
        for mut r in replies.into_iter().skip(1) {
            assert_eq!((r.kind, r.u32(), r.u32()), (FXP_STATUS, 1, FX_BAD_MESSAGE));
        }
        let names: Vec<_> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        assert_eq!(fs::read(t.path("f")).unwrap(), b"data");
        let mode = fs::metadata(t.path("f")).unwrap().mode() & 0o777;
        assert_ne!(mode, 0o777, "SETSTAT cut short did nothing");
    }

    #[test]
    fn unknown_requests_are_unsupported() {
        let mut s = Session::start();
        let req = s.req(99).s(b"whatever");
        assert_eq!(s.status(req).0, FX_OP_UNSUPPORTED);
        let req = s.ext("copy-data").s(b"whatever");
        assert_eq!(s.status(req).0, FX_OP_UNSUPPORTED);
        assert_eq!(s.end(), 0);
    }

    /// Counts the writes a session makes.
    struct Counting {
        bytes: Vec<u8>,
        writes: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn pipelined_writes_are_answered_in_few_writes() {
        let t = Temp::new();
        let mut input = init();
        let open = Req::new(FXP_OPEN, 1)
            .s(&t.p("big"))
            .u32(FXF_WRITE | FXF_CREAT)
            .no_attrs();
        input.extend_from_slice(&open.framed());
        // The first handle of a session is its first slot's first.
        let h = handle_bytes(0, 0);
        let mut expected = Vec::new();
        for i in 0..64u32 {
            let data = vec![u8::try_from(i).unwrap(); 32 << 10];
            let offset = u64::from(i) * (32 << 10);
            let req = Req::new(FXP_WRITE, 2 + i).s(&h).u64(offset).s(&data);
            input.extend_from_slice(&req.framed());
            expected.extend_from_slice(&data);
        }
        input.extend_from_slice(&Req::new(FXP_CLOSE, 66).s(&h).framed());
        let mut out = Counting {
            bytes: Vec::new(),
            writes: 0,
        };
        assert_eq!(serve(&input[..], &mut out), 0);
        let mut replies = replies(&out.bytes);
        assert_eq!(replies.len(), 67);
        assert_eq!(replies[1].kind, FXP_HANDLE);
        for (r, id) in replies[2..].iter_mut().zip(2..) {
            assert_eq!((r.kind, r.u32(), r.u32()), (FXP_STATUS, id, FX_OK));
        }
        assert_eq!(fs::read(t.path("big")).unwrap(), expected);
        // 2 MiB read in chunks of the 512 KiB buffer: a write per chunk.
        assert!(out.writes <= 6, "{} writes", out.writes);
    }

    #[test]
    fn a_read_is_capped_at_256_kib() {
        let t = Temp::new();
        fs::write(t.path("f"), vec![1u8; 600 << 10]).unwrap();
        let mut s = Session::start();
        let h = s.open(&t.p("f"), FXF_READ);
        assert_eq!(s.data(&h, 0, u32::MAX).unwrap().len(), MAX_DATA);
        assert_eq!(s.data(&h, 500 << 10, 1 << 20).unwrap().len(), 100 << 10);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn setstat_and_fsetstat_change_size_mode_times_and_owner() {
        let t = Temp::new();
        fs::write(t.path("f"), vec![0u8; 100]).unwrap();
        let meta = fs::metadata(t.path("f")).unwrap();
        let (uid, gid) = (meta.uid(), meta.gid());
        let mut s = Session::start();
        let req = s
            .req(FXP_SETSTAT)
            .s(&t.p("f"))
            .u32(0xf)
            .u64(10)
            .u32(uid)
            .u32(gid)
            .u32(0o640)
            .u32(1_000_000_000)
            .u32(1_100_000_000);
        s.ok(req);
        let meta = fs::metadata(t.path("f")).unwrap();
        assert_eq!(meta.len(), 10);
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.atime(), meta.mtime()), (1_000_000_000, 1_100_000_000));

        let h = s.open(&t.p("f"), FXF_WRITE);
        let req = s
            .req(FXP_FSETSTAT)
            .s(&h)
            .u32(0xf)
            .u64(5)
            .u32(uid)
            .u32(gid)
            .u32(0o600)
            .u32(1_200_000_000)
            .u32(1_300_000_000);
        s.ok(req);
        let meta = fs::metadata(t.path("f")).unwrap();
        assert_eq!(meta.len(), 5);
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!((meta.atime(), meta.mtime()), (1_200_000_000, 1_300_000_000));

        // lsetstat sets the link's times, not its target's; no size.
        std::os::unix::fs::symlink("f", t.path("l")).unwrap();
        let req = s
            .ext("lsetstat@openssh.com")
            .s(&t.p("l"))
            .u32(ATTR_ACMODTIME)
            .u32(1_400_000_000)
            .u32(1_500_000_000);
        s.ok(req);
        let link = fs::symlink_metadata(t.path("l")).unwrap();
        assert_eq!(link.mtime(), 1_500_000_000);
        assert_eq!(fs::metadata(t.path("f")).unwrap().mtime(), 1_300_000_000);
        let req = s
            .ext("lsetstat@openssh.com")
            .s(&t.p("l"))
            .u32(ATTR_SIZE)
            .u64(0);
        assert_eq!(s.status(req).0, FX_BAD_MESSAGE);

        let req = s.req(FXP_SETSTAT).s(&t.p("none")).perm(0o600);
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn realpath_resolves_as_openssh_does() {
        let t = Temp::new();
        fs::create_dir(t.path("sub")).unwrap();
        std::os::unix::fs::symlink("sub", t.path("rel")).unwrap();
        std::os::unix::fs::symlink(t.path("sub"), t.path("abs")).unwrap();
        fs::write(t.path("file"), b"").unwrap();
        let cwd = std::env::current_dir().unwrap().into_os_string().into_vec();
        let joined = |s: &str| t.p(s);
        let mut s = Session::start();
        for (asked, answer) in [
            (b".".to_vec(), Ok(cwd.clone())),
            (b"".to_vec(), Ok(cwd.clone())),
            (b"/".to_vec(), Ok(b"/".to_vec())),
            (b"/..//./".to_vec(), Ok(b"/".to_vec())),
            (joined("sub/../sub/./"), Ok(joined("sub"))),
            (joined("new"), Ok(joined("new"))),
            (joined("sub/../new"), Ok(joined("new"))),
            (joined("rel"), Ok(joined("sub"))),
            (joined("rel/x"), Ok(joined("sub/x"))),
            (joined("abs/../file"), Ok(joined("file"))),
            (joined("none/x"), Err(FX_NO_SUCH_FILE)),
            (joined("file/x"), Err(FX_FAILURE)),
        ] {
            let req = s.req(FXP_REALPATH).s(&asked);
            let got = s.name(req);
            assert_eq!(
                got.as_ref().map(|n| String::from_utf8_lossy(n)),
                answer.as_ref().map(|n| String::from_utf8_lossy(n)),
                "{}",
                String::from_utf8_lossy(&asked)
            );
        }
        // A loop of links ends.
        std::os::unix::fs::symlink("loop", t.path("loop")).unwrap();
        let req = s.req(FXP_REALPATH).s(&joined("loop/x"));
        assert_eq!(s.name(req), Err(FX_FAILURE));
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn links_folders_and_removal() {
        let t = Temp::new();
        fs::write(t.path("f"), b"data").unwrap();
        let mut s = Session::start();
        // OpenSSH's order: target, then the link.
        let req = s.req(FXP_SYMLINK).s(b"f").s(&t.p("l"));
        s.ok(req);
        assert_eq!(fs::read_link(t.path("l")).unwrap(), Path::new("f"));
        let req = s.req(FXP_READLINK).s(&t.p("l"));
        assert_eq!(s.name(req), Ok(b"f".to_vec()));
        let req = s.req(FXP_SYMLINK).s(b"f").s(&t.p("l"));
        assert_eq!(s.status(req).0, FX_FAILURE, "the link exists");
        let req = s.ext("hardlink@openssh.com").s(&t.p("f")).s(&t.p("h"));
        s.ok(req);
        assert_eq!(fs::metadata(t.path("f")).unwrap().nlink(), 2);
        for name in ["l", "h", "f"] {
            let req = s.req(FXP_REMOVE).s(&t.p(name));
            s.ok(req);
        }
        let req = s.req(FXP_REMOVE).s(&t.p("f"));
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        let req = s.req(FXP_MKDIR).s(&t.p("d")).no_attrs();
        s.ok(req);
        fs::write(t.path("d/x"), b"").unwrap();
        let req = s.req(FXP_RMDIR).s(&t.p("d"));
        assert_eq!(s.status(req).0, FX_FAILURE, "not empty");
        fs::remove_file(t.path("d/x")).unwrap();
        let req = s.req(FXP_RMDIR).s(&t.p("d"));
        s.ok(req);
        assert_eq!(fs::read_dir(&t.0).unwrap().count(), 0);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn fsync_statvfs_and_limits() {
        let t = Temp::new();
        let mut s = Session::start();
        let h = s.open(&t.p("f"), FXF_WRITE | FXF_CREAT);
        let req = s.ext("fsync@openssh.com").s(&h);
        s.ok(req);
        for req in [
            s.ext("statvfs@openssh.com").s(&t.p("")),
            s.ext("fstatvfs@openssh.com").s(&h),
        ] {
            let mut r = s.call(req);
            assert_eq!(r.kind, FXP_EXTENDED_REPLY);
            let v: Vec<u64> = (0..11).map(|_| r.u64()).collect();
            assert!(r.done());
            assert!(v[0] > 0 && v[2] > 0, "block size and count: {v:?}");
            assert!(v[3] >= v[4], "free blocks, for root and others");
            assert_eq!(v[9] & !3, 0, "only the two flags defined");
            assert!(v[10] >= 14, "the longest name");
        }
        let req = s.ext("statvfs@openssh.com").s(&t.p("none"));
        assert_eq!(s.status(req).0, FX_NO_SUCH_FILE);
        let req = s.ext("limits@openssh.com");
        let mut r = s.call(req);
        assert_eq!(r.kind, FXP_EXTENDED_REPLY);
        let limits: Vec<u64> = (0..4).map(|_| r.u64()).collect();
        assert_eq!(limits, [263_168, 262_144, 262_144, 256]);
        assert_eq!(s.end(), 0);
    }

    #[test]
    fn random_input_is_answered_and_never_panics() {
        // Handle requests and extensions with random fields, in a session
        // that opened nothing, so no file is touched; every one answered.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let kinds = [
            FXP_CLOSE,
            FXP_READ,
            FXP_WRITE,
            FXP_FSTAT,
            FXP_FSETSTAT,
            FXP_READDIR,
            FXP_INIT + 200,
            FXP_STATUS,
        ];
        let extensions = [
            "fsync@openssh.com",
            "fstatvfs@openssh.com",
            "limits@openssh.com",
            "?",
        ];
        let mut input = init();
        let mut sent = 0;
        for id in 0..5000u32 {
            let pick = |n: u64, len: usize| usize::try_from(n).unwrap() % len;
            let mut req = if next() % 4 == 0 {
                Req::ext(extensions[pick(next(), extensions.len())], id)
            } else {
                Req::new(kinds[pick(next(), kinds.len())], id)
            };
            // Often a plausible handle first, then random bytes.
            if next() % 2 == 0 {
                req = req.s(&handle_bytes(pick(next(), 3), 0));
            }
            for _ in 0..pick(next(), 40) {
                req.0.push(u8::try_from(next() & 0xff).unwrap());
            }
            input.extend_from_slice(&req.framed());
            sent += 1;
        }
        let (code, replies) = run_all(&input);
        assert_eq!(code, 0);
        assert_eq!(replies.len(), sent + 1);
    }
}
