//! Tests of `images/` only: over 600 lines because every image kind (pause, busybox, the
//! add-ons, a root filesystem directory) is unpacked and checked, and each refusal too.

use super::elf::{check_static_elf, elf_interpreter};
use super::*;
use flate2::read::GzDecoder;
use std::collections::BTreeMap;
use std::io::Read;

/// A minimal little-endian ELF64 image with one program header of type `p_type`; a
/// `PT_INTERP` header points at `interp`, NUL-terminated, after the header.
fn elf_with(p_type: u32, interp: &str) -> Vec<u8> {
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // ELFCLASS64
    elf[5] = 1; // little-endian
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf[64..68].copy_from_slice(&p_type.to_le_bytes());
    let interp_off = elf.len() as u64;
    let interp_len = interp.len() as u64 + 1;
    elf[64 + 8..64 + 16].copy_from_slice(&interp_off.to_le_bytes()); // p_offset
    elf[64 + 32..64 + 40].copy_from_slice(&interp_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(interp.as_bytes());
    elf.push(0);
    elf.extend_from_slice(b"payload");
    elf
}

fn fake_elf(p_type: u32) -> Vec<u8> {
    elf_with(p_type, "/lib64/ld-linux-x86-64.so.2")
}

/// A dynamic "busybox" in `dir` whose interpreter is `dir/ld.so`, and its one library
/// `dir/libc.so.6`; returns (busybox, [interpreter, libc]).
fn fake_dynamic_busybox(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let ld = dir.join("ld.so");
    let libc = dir.join("libc.so.6");
    fs::write(&ld, fake_elf(PT_LOAD)).unwrap();
    fs::write(&libc, elf_with(PT_LOAD, "libc")).unwrap();
    let busybox = dir.join("busybox");
    fs::write(&busybox, elf_with(PT_INTERP, ld.to_str().unwrap())).unwrap();
    (busybox, vec![ld, libc])
}

/// The path of a host file inside an image: without the leading `/`.
fn in_image(path: &Path) -> String {
    path.to_str().unwrap().trim_start_matches('/').to_owned()
}

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;

/// Every file of an OCI layout tarball, by path.
fn read_tar(bytes: &[u8]) -> BTreeMap<String, (tar::Header, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.insert(path, (entry.header().clone(), data));
    }
    out
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

fn blob<'a>(files: &'a BTreeMap<String, (tar::Header, Vec<u8>)>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").unwrap();
    let data = &files[&format!("blobs/sha256/{hex}")].1;
    assert_eq!(sha256_hex(data), hex, "blob content must match its name");
    data
}

struct Unpacked {
    index: serde_json::Value,
    manifest: serde_json::Value,
    config: serde_json::Value,
    layer: BTreeMap<String, (tar::Header, Vec<u8>)>,
    outer: BTreeMap<String, (tar::Header, Vec<u8>)>,
}

fn unpack(tarball: &Path) -> Unpacked {
    let outer = read_tar(&fs::read(tarball).unwrap());
    let index = json(&outer["index.json"].1);
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = json(blob(&outer, manifest_digest));
    let config = json(blob(&outer, manifest["config"]["digest"].as_str().unwrap()));
    let layer_gz = blob(&outer, manifest["layers"][0]["digest"].as_str().unwrap());
    let mut layer_tar = Vec::new();
    GzDecoder::new(layer_gz).read_to_end(&mut layer_tar).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        sha256_digest(&layer_tar),
        "diff_id is the uncompressed layer"
    );
    let layer = read_tar(&layer_tar);
    Unpacked {
        index,
        manifest,
        config,
        layer,
        outer,
    }
}

#[test]
fn pause_image_has_layout_names_and_consistent_digests() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("pause-bin");
    fs::write(&bin, fake_elf(PT_LOAD)).unwrap();
    let built = build_pause(&dir.path().join("out"), &bin).unwrap();
    assert_eq!(built.tarball, dir.path().join("out").join(PAUSE_TARBALL));
    assert_eq!(built.reference, "registry.k8s.io/pause:3.10");

    let img = unpack(&built.tarball);
    assert_eq!(img.outer["oci-layout"].1, br#"{"imageLayoutVersion":"1.0.0"}"#);
    let desc = &img.index["manifests"][0];
    assert_eq!(desc["digest"], built.manifest_digest.as_str());
    assert_eq!(desc["mediaType"], oci::MEDIA_MANIFEST);
    assert_eq!(
        desc["annotations"]["io.containerd.image.name"],
        "registry.k8s.io/pause:3.10"
    );
    assert_eq!(desc["annotations"]["org.opencontainers.image.ref.name"], "3.10");
    assert_eq!(desc["platform"]["os"], "linux");
    assert_eq!(img.manifest["schemaVersion"], 2);
    assert_eq!(img.manifest["layers"][0]["mediaType"], oci::MEDIA_LAYER_GZIP);
    assert_eq!(img.config["config"]["Entrypoint"], serde_json::json!(["/pause"]));
    assert_eq!(img.config["architecture"], oci::host_architecture());
    assert!(
        img.config.get("created").is_none(),
        "a timestamp would break reproducibility"
    );

    let (header, data) = &img.layer["pause"];
    assert_eq!(data, &fake_elf(PT_LOAD));
    assert_eq!(header.mode().unwrap(), 0o755);
    assert_eq!(img.layer.len(), 1);
    // Sizes in descriptors match the blobs.
    let layer_size = img.manifest["layers"][0]["size"].as_u64().unwrap();
    let layer_digest = img.manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(blob(&img.outer, layer_digest).len() as u64, layer_size);
}

#[test]
fn packing_is_reproducible_and_owner_free() {
    let dir = tempfile::tempdir().unwrap();
    let spec = busybox_spec(DynamicExecutable {
        data: fake_elf(PT_INTERP),
        interpreter: "/lib64/ld-linux-x86-64.so.2".to_owned(),
        libraries: vec![("lib64/ld-linux-x86-64.so.2".to_owned(), fake_elf(PT_LOAD))],
    });
    let a = pack(&spec, &dir.path().join("a.tar")).unwrap();
    let b = pack(&spec, &dir.path().join("b.tar")).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(fs::read(&a.tarball).unwrap(), fs::read(&b.tarball).unwrap());
    // Written in place of a temporary file that is gone once the tarball has its name.
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["a.tar", "b.tar"]);

    let img = unpack(&a.tarball);
    for (path, (header, _)) in img.layer.iter().chain(img.outer.iter()) {
        assert_eq!(header.mtime().unwrap(), 0, "{path}");
        assert_eq!(header.uid().unwrap(), 0, "{path}");
        assert_eq!(header.gid().unwrap(), 0, "{path}");
    }
}

#[test]
fn busybox_image_has_applets_loader_libraries_and_etc() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, libs) = fake_dynamic_busybox(dir.path());
    let built = build_busybox(&dir.path().join("out"), &bin, &libs).unwrap();
    let img = unpack(&built.tarball);
    assert_eq!(
        img.index["manifests"][0]["annotations"]["io.containerd.image.name"],
        BUSYBOX_IMAGE
    );
    assert_eq!(img.config["config"]["Cmd"], serde_json::json!(["sh"]));

    let (header, _) = &img.layer["bin/sh"];
    assert_eq!(header.entry_type(), tar::EntryType::Symlink);
    assert_eq!(header.link_name().unwrap().unwrap().to_str(), Some("busybox"));
    assert_eq!(img.layer["bin/busybox"].1, fs::read(&bin).unwrap());
    // The loader and the library sit at their host paths, with their parents as directories.
    for lib in &libs {
        let (header, data) = &img.layer[&in_image(lib)];
        assert_eq!(data, &fs::read(lib).unwrap());
        assert_eq!(header.entry_type(), tar::EntryType::Regular);
        let parent = in_image(lib.parent().unwrap());
        assert_eq!(
            img.layer[&format!("{parent}/")].0.entry_type(),
            tar::EntryType::Directory
        );
    }
    assert_eq!(img.layer["etc/nsswitch.conf"].1, NSSWITCH_CONF.as_bytes());
    assert!(String::from_utf8_lossy(&img.layer["etc/nsswitch.conf"].1).contains("hosts: files dns"));
    assert!(String::from_utf8_lossy(&img.layer["etc/passwd"].1).starts_with("root:x:0:0:"));
    assert!(String::from_utf8_lossy(&img.layer["etc/group"].1).contains("nobody:x:65534:"));
    assert_eq!(img.layer["tmp/"].0.mode().unwrap(), 0o1777);
    for applet in BUSYBOX_APPLETS {
        assert!(
            img.layer.contains_key(&format!("bin/{applet}")),
            "missing applet {applet}"
        );
    }
    // Parents come before children in the layer.
    let names: Vec<_> = img.layer.keys().collect();
    assert!(
        names.iter().position(|n| *n == "bin/").unwrap() < names.iter().position(|n| *n == "bin/sh").unwrap()
    );
}

#[test]
fn busybox_must_be_dynamic_and_come_with_its_interpreter() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, libs) = fake_dynamic_busybox(dir.path());

    // A static busybox is refused, saying why (NSS) and what to use instead.
    let static_bb = dir.path().join("static");
    fs::write(&static_bb, fake_elf(PT_LOAD)).unwrap();
    let err = build_busybox(dir.path(), &static_bb, &libs).unwrap_err();
    assert!(
        matches!(&err, ImageError::NotDynamic { path, .. } if *path == static_bb),
        "{err}"
    );
    assert!(err.to_string().contains("NSS"), "{err}");

    // Without its interpreter the image could not start anything.
    let err = build_busybox(dir.path(), &bin, &libs[1..]).unwrap_err();
    assert!(
        matches!(&err, ImageError::MissingInterpreter { interpreter, .. } if *interpreter == libs[0].to_str().unwrap()),
        "{err}"
    );

    // Libraries must be absolute paths to ELF files.
    let script = dir.path().join("script");
    fs::write(&script, "#!/bin/sh\n").unwrap();
    let with_script = [libs.clone(), vec![script.clone()]].concat();
    let err = build_busybox(dir.path(), &bin, &with_script).unwrap_err();
    assert!(
        matches!(&err, ImageError::BadLibrary { path, .. } if *path == script),
        "{err}"
    );
    let err = build_busybox(dir.path(), &bin, &[PathBuf::from("relative.so")]).unwrap_err();
    assert!(matches!(&err, ImageError::BadLibrary { .. }), "{err}");
    assert!(!dir.path().join(BUSYBOX_TARBALL).exists());
}

#[test]
fn dynamic_or_non_elf_inputs_are_refused_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = dir.path().join("dynamic");
    fs::write(&dynamic, fake_elf(PT_INTERP)).unwrap();
    let err = build_pause(dir.path(), &dynamic).unwrap_err();
    assert!(
        matches!(&err, ImageError::NotStatic { path, .. } if *path == dynamic),
        "{err}"
    );
    assert!(err.to_string().contains("dynamically linked"), "{err}");

    let script = dir.path().join("script");
    fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let err = build_pause(dir.path(), &script).unwrap_err();
    assert!(err.to_string().contains("not an ELF file"), "{err}");

    let missing = dir.path().join("missing");
    let err = build_pause(dir.path(), &missing).unwrap_err();
    assert!(
        matches!(&err, ImageError::Read { path, .. } if *path == missing),
        "{err}"
    );
    assert!(!dir.path().join(PAUSE_TARBALL).exists());
}

#[test]
fn real_host_busybox_is_dynamic_and_needs_the_host_loader() {
    // /bin/dash is dynamically linked on Debian, with the x86-64 loader as interpreter.
    if let Ok(data) = fs::read("/bin/dash") {
        assert!(check_static_elf(&data).is_err());
        assert_eq!(
            elf_interpreter(&data).unwrap().as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
    }
    // Debian's busybox-static, when installed, is exactly what the busybox image must refuse.
    if let Ok(data) = fs::read("/bin/busybox") {
        assert_eq!(elf_interpreter(&data), Ok(None));
        let err = read_dynamic_executable(Path::new("/bin/busybox"), &[]).unwrap_err();
        assert!(matches!(err, ImageError::NotDynamic { .. }), "{err}");
    }
}

#[test]
fn addon_images_have_their_binary_as_entrypoint_and_a_minimal_etc() {
    for addon in Addon::ALL {
        let spec = addon_spec(addon, fake_elf(PT_LOAD));
        assert_eq!(spec.entrypoint, [format!("/{}", addon.name())]);
        assert!(
            spec.reference.starts_with("localhost/k8sd/"),
            "{}",
            spec.reference
        );
        assert!(
            spec.reference
                .ends_with(&format!("/{}:{}", addon.name(), addon.version()))
        );
        let paths: Vec<&str> = spec.entries.iter().map(Entry::path).collect();
        assert_eq!(paths, [addon.name(), "etc", "etc/passwd", "etc/group", "tmp"]);
        assert!(
            spec.entries
                .iter()
                .any(|e| matches!(e, Entry::Dir { path, mode } if path == "tmp" && *mode == 0o1777))
        );
        assert!(spec.entries.iter().any(
            |e| matches!(e, Entry::File { path, data, .. } if path == "etc/passwd" && String::from_utf8_lossy(data).contains("nobody:x:65534:65534:"))
        ));
    }
    // The catalog and the specs agree on names and tarballs.
    let catalog = catalog::all();
    for addon in Addon::ALL {
        assert!(
            catalog
                .iter()
                .any(|e| e.reference == addon.reference() && e.tarball == addon.tarball() && !e.required)
        );
    }
    assert_eq!(Addon::CoreDns.reference(), catalog::coredns_image());
    assert_eq!(Addon::CoreDns.tarball(), "coredns.tar");
    assert_eq!(Addon::MetricsServer.tarball(), "metrics-server.tar");
    assert_eq!(
        Addon::LocalPathProvisioner.tarball(),
        "local-path-provisioner.tar"
    );
}

#[test]
fn addon_images_are_built_from_the_pinned_binary_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let addons = dir.path().join("addons");
    for addon in Addon::ALL {
        let bin = addon_binary(&addons, addon);
        assert_eq!(
            bin,
            addons.join(addon.name()).join(addon.version()).join(addon.name())
        );
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(&bin, elf_with(PT_LOAD, addon.name())).unwrap();
    }
    let a = build_addon(&dir.path().join("a"), &addons, Addon::CoreDns).unwrap();
    let b = build_addon(&dir.path().join("b"), &addons, Addon::CoreDns).unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    assert_eq!(fs::read(&a.tarball).unwrap(), fs::read(&b.tarball).unwrap());
    assert_eq!(a.tarball, dir.path().join("a/coredns.tar"));
    let img = unpack(&a.tarball);
    assert_eq!(
        img.config["config"]["Entrypoint"],
        serde_json::json!(["/coredns"])
    );
    assert_eq!(
        img.index["manifests"][0]["annotations"]["io.containerd.image.name"],
        catalog::coredns_image()
    );
    assert_eq!(img.layer["coredns"].1, elf_with(PT_LOAD, "coredns"));
    assert_eq!(img.layer["coredns"].0.mode().unwrap(), 0o755);

    // Another add-on's binary gives another digest.
    let m = build_addon(&dir.path().join("a"), &addons, Addon::MetricsServer).unwrap();
    assert_ne!(m.manifest_digest, a.manifest_digest);
    assert_eq!(
        unpack(&m.tarball).config["config"]["Entrypoint"],
        serde_json::json!(["/metrics-server"])
    );
}

#[test]
fn a_missing_or_dynamic_addon_binary_is_refused_naming_the_build_script() {
    let dir = tempfile::tempdir().unwrap();
    let err = build_addon(
        dir.path(),
        &dir.path().join("addons"),
        Addon::LocalPathProvisioner,
    )
    .unwrap_err();
    assert!(
        matches!(
            &err,
            ImageError::MissingAddon {
                addon: "local-path-provisioner",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("scripts/build-addons.sh"), "{err}");
    assert!(
        err.to_string().contains(Addon::LocalPathProvisioner.version()),
        "{err}"
    );

    let bin = addon_binary(&dir.path().join("addons"), Addon::MetricsServer);
    fs::create_dir_all(bin.parent().unwrap()).unwrap();
    fs::write(&bin, fake_elf(PT_INTERP)).unwrap();
    let err = build_addon(dir.path(), &dir.path().join("addons"), Addon::MetricsServer).unwrap_err();
    assert!(matches!(err, ImageError::NotStatic { .. }), "{err}");
}

#[test]
fn references_must_be_qualified_and_not_latest() {
    assert_eq!(tag_of("registry.k8s.io/pause:3.10").unwrap(), "3.10");
    assert_eq!(
        tag_of("docker.io/library/busybox:1.37-local").unwrap(),
        "1.37-local"
    );
    assert_eq!(tag_of("localhost:5000/x:1").unwrap(), "1");
    for bad in [
        "busybox:1.36",
        "library/busybox:1",
        "docker.io/library/busybox",
        "docker.io/x:latest",
        "docker.io/x@sha256:00",
        "localhost:5000/x",
    ] {
        assert!(
            matches!(tag_of(bad), Err(ImageError::BadReference { .. })),
            "{bad} should be refused"
        );
    }
}

#[test]
fn invalid_entries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            vec![Entry::Symlink {
                path: "bin/sh".into(),
                target: "busybox".into(),
            }],
            "parent",
        ),
        (
            vec![Entry::Dir {
                path: "/abs".into(),
                mode: 0o755,
            }],
            "relative",
        ),
        (
            vec![Entry::Dir {
                path: "a/../b".into(),
                mode: 0o755,
            }],
            "'..'",
        ),
        (
            vec![
                Entry::Dir {
                    path: "a".into(),
                    mode: 0o755,
                },
                Entry::Dir {
                    path: "a".into(),
                    mode: 0o700,
                },
            ],
            "twice",
        ),
    ];
    for (entries, want) in cases {
        let spec = ImageSpec {
            entries,
            ..pause_spec(vec![])
        };
        let err = pack(&spec, &dir.path().join("x.tar")).unwrap_err();
        assert!(
            matches!(err, ImageError::BadEntry { .. }) && err.to_string().contains(want),
            "{err}"
        );
    }
}

#[test]
fn import_command_targets_the_cri_namespace_of_the_given_socket() {
    let cmd = import_command(
        Path::new("/rt/ctr"),
        Path::new("/run/x/containerd.sock"),
        Path::new("/o/p.tar"),
    );
    assert_eq!(cmd.get_program(), "/rt/ctr");
    let envs: Vec<_> = cmd.get_envs().collect();
    assert_eq!(
        envs,
        [(
            std::ffi::OsStr::new("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS"),
            Some(std::ffi::OsStr::new("1"))
        )]
    );
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(
        args,
        [
            "--address",
            "/run/x/containerd.sock",
            "--namespace",
            "k8s.io",
            "images",
            "import",
            "/o/p.tar"
        ]
    );
}

#[test]
fn pin_command_labels_the_reference_in_the_cri_namespace() {
    let cmd = pin_command(
        Path::new("/rt/ctr"),
        Path::new("/run/x/containerd.sock"),
        "k8sd.local/pause:3.10",
    );
    assert_eq!(cmd.get_program(), "/rt/ctr");
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(
        args,
        [
            "--address",
            "/run/x/containerd.sock",
            "--namespace",
            "k8s.io",
            "images",
            "label",
            "k8sd.local/pause:3.10",
            "io.cri-containerd.pinned=pinned"
        ]
    );
}

#[test]
fn containerd_template_names_our_pause_image() {
    // containerd 2 (config version 3): the CRI images plugin's pinned sandbox image.
    let template = include_str!("../../assets/containerd/config.toml");
    let pinned = template
        .split_once("[plugins.\"io.containerd.cri.v1.images\".pinned_images]")
        .map(|(_, rest)| rest)
        .expect("assets/containerd/config.toml has a pinned_images table");
    let sandbox = pinned
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sandbox ="))
        .expect("pinned_images names a sandbox image");
    assert_eq!(sandbox, format!("sandbox = \"{PAUSE_IMAGE}\""));
}

/// A rootfs with what the conformance images carry: nested dirs, a setuid binary, a relative
/// and an absolute symlink, a hard link, and a sticky /tmp.
fn sample_rootfs(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(root.join("usr/local/bin")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::write(root.join("usr/local/bin/nnp"), b"setuid").unwrap();
    fs::set_permissions(root.join("usr/local/bin/nnp"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("bin/busybox"), b"bb").unwrap();
    fs::hard_link(root.join("bin/busybox"), root.join("bin/hardlinked")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("/usr/local/bin/nnp", root.join("nnp")).unwrap();
}

fn rootfs_spec(root: &Path) -> ImageSpec {
    ImageSpec {
        reference: "registry.k8s.io/e2e-test-images/nonewprivs:1.4".to_owned(),
        entrypoint: vec!["/agnhost".to_owned()],
        cmd: vec!["pause".to_owned()],
        env: vec![DEFAULT_PATH.to_owned(), "A=b".to_owned()],
        working_dir: Some("/srv".to_owned()),
        user: Some("1234".to_owned()),
        exposed_ports: vec!["80/tcp".to_owned(), "53/udp".to_owned()],
        labels: BTreeMap::from([("org.opencontainers.image.version".to_owned(), "1.4".to_owned())]),
        entries: read_rootfs(root).unwrap(),
    }
}

#[test]
fn a_rootfs_directory_packs_with_modes_links_and_process_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    sample_rootfs(&root);
    let built = pack(&rootfs_spec(&root), &dir.path().join("img.tar")).unwrap();
    let img = unpack(&built.tarball);

    assert_eq!(
        img.index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "registry.k8s.io/e2e-test-images/nonewprivs:1.4"
    );
    let config = &img.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!(["/agnhost"]));
    assert_eq!(config["Cmd"], serde_json::json!(["pause"]));
    assert_eq!(config["Env"][1], "A=b");
    assert_eq!(config["WorkingDir"], "/srv");
    assert_eq!(config["User"], "1234");
    assert_eq!(
        config["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "80/tcp": {}})
    );
    assert_eq!(config["Labels"]["org.opencontainers.image.version"], "1.4");

    let (nnp, data) = &img.layer["usr/local/bin/nnp"];
    assert_eq!(nnp.mode().unwrap(), 0o4755, "setuid survives");
    assert_eq!(data, b"setuid");
    assert_eq!(img.layer["tmp/"].0.mode().unwrap(), 0o1777);
    assert_eq!(img.layer["bin/hardlinked"].1, b"bb", "a hard link is a copy");
    let sh = &img.layer["bin/sh"].0;
    assert_eq!(sh.entry_type(), tar::EntryType::Symlink);
    assert_eq!(sh.link_name().unwrap().unwrap().to_str(), Some("busybox"));
    let abs = &img.layer["nnp"].0;
    assert_eq!(
        abs.link_name().unwrap().unwrap().to_str(),
        Some("/usr/local/bin/nnp")
    );
    for (path, (header, _)) in &img.layer {
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0), "{path}");
        assert_eq!(header.mtime().unwrap(), 0, "{path}");
    }
    // Parents first, in path order, with nothing of the host above the rootfs.
    let names: Vec<&String> = img.layer.keys().collect();
    assert_eq!(names.first().map(|s| s.as_str()), Some("bin/"));
    assert!(!names.iter().any(|n| n.contains("root")), "{names:?}");
}

#[test]
fn packing_a_rootfs_is_reproducible_across_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    sample_rootfs(&a);
    sample_rootfs(&b);
    let x = pack(&rootfs_spec(&a), &dir.path().join("a.tar")).unwrap();
    let y = pack(&rootfs_spec(&b), &dir.path().join("b.tar")).unwrap();
    assert_eq!(x.manifest_digest, y.manifest_digest);
    assert_eq!(fs::read(&x.tarball).unwrap(), fs::read(&y.tarball).unwrap());

    // Another label is another image, even with the same files (agnhost 2.55 and 2.63.0).
    let mut other = rootfs_spec(&a);
    other
        .labels
        .insert("org.opencontainers.image.version".to_owned(), "2.55".to_owned());
    let z = pack(&other, &dir.path().join("z.tar")).unwrap();
    assert_ne!(x.manifest_digest, z.manifest_digest);
}

#[test]
fn a_rootfs_with_a_socket_or_no_directory_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("run")).unwrap();
    let socket = root.join("run/s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let err = read_rootfs(&root).unwrap_err();
    assert!(
        matches!(&err, ImageError::BadRootfs { path, .. } if *path == socket),
        "{err}"
    );
    assert!(err.to_string().contains("remove it"), "{err}");

    let file = dir.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(read_rootfs(&file), Err(ImageError::BadRootfs { .. })));
    assert!(matches!(
        read_rootfs(&dir.path().join("missing")),
        Err(ImageError::Read { .. })
    ));
}

#[test]
fn busybox_tag_follows_the_source_pin() {
    // The base image is named after the busybox it packs, so a bumped pin must rename it.
    let pins = include_str!("../../assets/busybox/source.env");
    let version = pins
        .lines()
        .find_map(|l| l.strip_prefix("VERSION="))
        .expect("assets/busybox/source.env sets VERSION");
    let major_minor = version.rsplit_once('.').map_or(version, |(mm, _)| mm);
    assert_eq!(
        tag_of(BUSYBOX_IMAGE).unwrap(),
        format!("{major_minor}-local"),
        "rename BUSYBOX_IMAGE (and every user) after the pin {version}"
    );
}
