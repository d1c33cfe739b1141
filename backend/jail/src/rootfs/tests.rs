//! Root filesystem assembly, checked on folders.

use super::*;

fn names(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| {
            let (what, path) = s.describe();
            format!("{what} {}", path.display())
        })
        .collect()
}

fn index(steps: &[String], prefix: &str) -> usize {
    steps
        .iter()
        .position(|s| s.starts_with(prefix))
        .unwrap_or_else(|| panic!("no step {prefix}"))
}

#[test]
fn order_private_then_overlay_then_kernel_fs_then_pivot() {
    let steps = plan(
        Lower::Image(Path::new("/img/busybox")),
        &UpperSource::Volume(Path::new("/s/web/volume")),
        Path::new("/s/mnt"),
    );
    let n = names(&steps);
    assert_eq!(n[0], "make mounts private /");
    assert_eq!(n[1], "mount the jail's tmpfs /s/mnt");
    assert!(index(&n, "mkdir /s/mnt/root") < index(&n, "mount overlay root"));
    assert!(index(&n, "mount overlay root") < index(&n, "mount proc"));
    assert!(index(&n, "mount /dev") < index(&n, "mknod /s/mnt/root/dev/null"));
    assert!(index(&n, "mount proc") < index(&n, "bind /proc entry"));
    assert!(
        index(&n, "mknod /s/mnt/root/dev/null")
            < index(&n, "hide kernel file /s/mnt/root/proc/kcore")
    );
    assert_eq!(n.last().unwrap(), "pivot_root /s/mnt/root");
    let Step::Mount { data, .. } = &steps[index(&n, "mount overlay root")] else {
        panic!()
    };
    assert_eq!(
        data.as_deref().unwrap().to_str().unwrap(),
        "lowerdir=/img/busybox,upperdir=/s/web/volume/upper,workdir=/s/web/volume/work"
    );
}

#[test]
fn tmpfs_upper_is_mounted_before_the_overlay_that_uses_it() {
    let steps = plan(
        Lower::Image(Path::new("/img/b")),
        &UpperSource::Tmpfs { bytes: 1 << 20 },
        Path::new("/s/mnt"),
    );
    let n = names(&steps);
    assert_eq!(n[1], "mount the jail's tmpfs /s/mnt");
    let Step::Mount { data, .. } = &steps[1] else {
        panic!()
    };
    assert_eq!(
        data.as_deref().unwrap().to_str().unwrap(),
        "size=1048576,mode=0700"
    );
    assert!(index(&n, "mkdir /s/mnt/work") < index(&n, "mount overlay root"));
}

#[test]
fn in_a_user_namespace_devices_are_bound_not_made_and_the_image_is_attached() {
    let steps = plan(
        Lower::IdMapped { fd: 8 },
        &UpperSource::Volume(Path::new("/v")),
        Path::new("/r"),
    );
    let n = names(&steps);
    assert!(!n.iter().any(|s| s.starts_with("mknod")), "{n:?}");
    // The id-mapped image goes on the jail's own tmpfs, under the root.
    assert!(
        index(&n, "mount the jail's tmpfs /r") < index(&n, "attach the id-mapped image /r/lower")
    );
    assert!(index(&n, "attach the id-mapped image /r/lower") < index(&n, "mount overlay root"));
    let Step::Mount { data, .. } = &steps[index(&n, "mount overlay root")] else {
        panic!()
    };
    assert!(
        data.as_deref()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("lowerdir=/r/lower,"),
        "{data:?}"
    );
    assert!(index(&n, "create file /r/root/dev/null") < index(&n, "bind device /r/root/dev/null"));
}

#[test]
fn proc_knobs_are_read_only_and_dev_is_private() {
    let steps = plan(
        Lower::Image(Path::new("/i")),
        &UpperSource::Volume(Path::new("/v")),
        Path::new("/r"),
    );
    let ro: Vec<_> = steps
        .iter()
        .map(|s| match s {
            Step::IfExists { step, .. } => step.as_ref(),
            s => s,
        })
        .filter_map(|s| match s {
            Step::Mount { target, flags, .. }
                if flags.contains(MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY) =>
            {
                Some(target.to_str().unwrap().to_owned())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        ro,
        [
            "/r/root/proc/bus",
            "/r/root/proc/fs",
            "/r/root/proc/irq",
            "/r/root/proc/sys",
            "/r/root/proc/sysrq-trigger"
        ]
    );
    // Masking comes after proc is mounted, and before the pivot.
    let names = names(&steps);
    let kcore = names.iter().position(|n| n.contains("proc/kcore")).unwrap();
    assert!(index(&names, "mount proc") < kcore);
    assert!(kcore < index(&names, "pivot_root"));
    assert!(steps.iter().any(|s| matches!(s, Step::Mount { data: Some(d), .. } if d.to_str().unwrap().contains("newinstance"))));
}
