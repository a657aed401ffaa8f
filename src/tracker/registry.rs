//! The tracker's state as pure code: online peers, shared files and their
//! downloading groups. No sockets, no clock: the server calls in when a
//! session says hello, asks something, or ends, and sends what comes out.
//!
//! Invariants (checked by `check_invariants` in the tests):
//! - every file's owner is an online peer, and the file is in that peer's `owns`;
//! - a peer is a member of a group exactly when the group's name is in its `joined`;
//! - no peer is a member of its own file's group, nor twice of one group;
//! - a request that is refused changes nothing.

use crate::manifest::{Manifest, ManifestError};
use crate::wire::tracker::{
    FileEntry, GroupView, PeerId, PeerInfo, RefusalCode, MAX_FILES, MAX_GROUP_MEMBERS,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

/// Why the registry refused a request. Its `Display` is the message the
/// tracker sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The session has not said hello, or is already gone.
    UnknownPeer(PeerId),
    UnknownFile(String),
    /// Another peer shares a file of this name.
    AlreadyShared {
        name: String,
        owner: PeerId,
    },
    /// This peer already shares a file of this name.
    AlreadySharing(String),
    OwnFile(String),
    AlreadyMember(String),
    NotMember(String),
    BadManifest(ManifestError),
    TooManyFiles,
    GroupFull(String),
}

impl Refusal {
    /// The code the tracker sends with this refusal.
    pub fn code(&self) -> RefusalCode {
        match self {
            Refusal::UnknownPeer(_) => RefusalCode::Protocol,
            Refusal::UnknownFile(_) => RefusalCode::UnknownFile,
            Refusal::AlreadyShared { .. } | Refusal::AlreadySharing(_) => {
                RefusalCode::AlreadyShared
            }
            Refusal::OwnFile(_) => RefusalCode::OwnFile,
            Refusal::AlreadyMember(_) => RefusalCode::AlreadyMember,
            Refusal::NotMember(_) => RefusalCode::NotMember,
            Refusal::BadManifest(_) => RefusalCode::BadManifest,
            Refusal::TooManyFiles | Refusal::GroupFull(_) => RefusalCode::Full,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownPeer(p) => write!(f, "{p} is not online (send hello first)"),
            Refusal::UnknownFile(n) => write!(f, "no shared file is named {n}"),
            Refusal::AlreadyShared { name, owner } => {
                write!(f, "{owner} already shares a file named {name}")
            }
            Refusal::AlreadySharing(n) => write!(f, "you already share {n}"),
            Refusal::OwnFile(n) => write!(f, "{n} is your own file"),
            Refusal::AlreadyMember(n) => write!(f, "you are already in the group of {n}"),
            Refusal::NotMember(n) => {
                write!(f, "you are neither the owner nor a member of {n}'s group")
            }
            Refusal::BadManifest(e) => write!(f, "bad manifest: {e}"),
            Refusal::TooManyFiles => write!(f, "the tracker holds {MAX_FILES} files already"),
            Refusal::GroupFull(n) => {
                write!(
                    f,
                    "the group of {n} has {MAX_GROUP_MEMBERS} members already"
                )
            }
        }
    }
}

impl std::error::Error for Refusal {}

/// Something the tracker must tell a peer that did not ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// The group changed: here is its new view.
    Group { to: PeerId, group: GroupView },
    /// The group's owner went offline; the group is gone.
    GroupClosed { to: PeerId, name: String },
}

impl Push {
    pub fn to(&self) -> PeerId {
        match self {
            Push::Group { to, .. } | Push::GroupClosed { to, .. } => *to,
        }
    }
}

#[derive(Debug)]
struct PeerRecord {
    info: PeerInfo,
    owns: BTreeSet<String>,
    joined: BTreeSet<String>,
}

#[derive(Debug)]
struct SharedFile {
    manifest: Manifest,
    owner: PeerInfo,
    /// In join order.
    members: Vec<PeerInfo>,
}

impl SharedFile {
    fn view(&self) -> GroupView {
        GroupView {
            manifest: self.manifest.clone(),
            owner: self.owner,
            members: self.members.clone(),
        }
    }

    /// Tells the owner and every member but `except` the group's new view.
    fn push_view(&self, except: PeerId, pushes: &mut Vec<Push>) {
        let view = self.view();
        for to in std::iter::once(self.owner.id).chain(self.members.iter().map(|m| m.id)) {
            if to != except {
                pushes.push(Push::Group {
                    to,
                    group: view.clone(),
                });
            }
        }
    }
}

/// Online peers, shared files, downloading groups.
#[derive(Debug, Default)]
pub struct Registry {
    peers: BTreeMap<PeerId, PeerRecord>,
    files: BTreeMap<String, SharedFile>,
    next_id: u64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A peer came online; `udp` is where it receives rudp traffic.
    pub fn connect(&mut self, udp: SocketAddr) -> PeerId {
        self.next_id += 1;
        let id = PeerId(self.next_id);
        self.peers.insert(
            id,
            PeerRecord {
                info: PeerInfo { id, udp },
                owns: BTreeSet::new(),
                joined: BTreeSet::new(),
            },
        );
        id
    }

    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn is_online(&self, peer: PeerId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// register-peer: `peer` shares `manifest`.
    pub fn register_file(&mut self, peer: PeerId, manifest: Manifest) -> Result<(), Refusal> {
        let record = self.peers.get(&peer).ok_or(Refusal::UnknownPeer(peer))?;
        manifest.validate().map_err(Refusal::BadManifest)?;
        if let Some(file) = self.files.get(&manifest.name) {
            return Err(if file.owner.id == peer {
                Refusal::AlreadySharing(manifest.name)
            } else {
                Refusal::AlreadyShared {
                    name: manifest.name,
                    owner: file.owner.id,
                }
            });
        }
        if self.files.len() >= MAX_FILES {
            return Err(Refusal::TooManyFiles);
        }
        let owner = record.info;
        if let Some(record) = self.peers.get_mut(&peer) {
            record.owns.insert(manifest.name.clone());
        }
        self.files.insert(
            manifest.name.clone(),
            SharedFile {
                manifest,
                owner,
                members: Vec::new(),
            },
        );
        Ok(())
    }

    /// list: every shared file, by name.
    pub fn list(&self) -> Vec<FileEntry> {
        self.files
            .values()
            .map(|f| FileEntry {
                name: f.manifest.name.clone(),
                size: f.manifest.size,
                chunk_count: f.manifest.chunk_count(),
                owner: f.owner,
                group_size: f.members.len() as u32,
            })
            .collect()
    }

    /// register-group: `peer` joins the group of `name`. Returns the new view
    /// for the joiner; the owner and the other members get it as a push.
    pub fn join_group(
        &mut self,
        peer: PeerId,
        name: &str,
        pushes: &mut Vec<Push>,
    ) -> Result<GroupView, Refusal> {
        let record = self
            .peers
            .get_mut(&peer)
            .ok_or(Refusal::UnknownPeer(peer))?;
        let file = self
            .files
            .get_mut(name)
            .ok_or_else(|| Refusal::UnknownFile(name.to_string()))?;
        if file.owner.id == peer {
            return Err(Refusal::OwnFile(name.to_string()));
        }
        if record.joined.contains(name) {
            return Err(Refusal::AlreadyMember(name.to_string()));
        }
        if file.members.len() >= MAX_GROUP_MEMBERS {
            return Err(Refusal::GroupFull(name.to_string()));
        }
        record.joined.insert(name.to_string());
        file.members.push(record.info);
        file.push_view(peer, pushes);
        Ok(file.view())
    }

    /// `peer` leaves the group of `name`; the owner and the remaining members
    /// get the new view.
    pub fn leave_group(
        &mut self,
        peer: PeerId,
        name: &str,
        pushes: &mut Vec<Push>,
    ) -> Result<(), Refusal> {
        let record = self
            .peers
            .get_mut(&peer)
            .ok_or(Refusal::UnknownPeer(peer))?;
        let file = self
            .files
            .get_mut(name)
            .ok_or_else(|| Refusal::UnknownFile(name.to_string()))?;
        if !record.joined.remove(name) {
            return Err(Refusal::NotMember(name.to_string()));
        }
        file.members.retain(|m| m.id != peer);
        file.push_view(peer, pushes);
        Ok(())
    }

    /// The current view of `name`'s group, for its owner or a member.
    pub fn group(&self, peer: PeerId, name: &str) -> Result<GroupView, Refusal> {
        let record = self.peers.get(&peer).ok_or(Refusal::UnknownPeer(peer))?;
        let file = self
            .files
            .get(name)
            .ok_or_else(|| Refusal::UnknownFile(name.to_string()))?;
        if file.owner.id != peer && !record.joined.contains(name) {
            return Err(Refusal::NotMember(name.to_string()));
        }
        Ok(file.view())
    }

    /// `peer` went offline: it leaves every group, and the groups of the files
    /// it owned close (their members are told). Unknown peers are ignored.
    pub fn disconnect(&mut self, peer: PeerId, pushes: &mut Vec<Push>) {
        let Some(record) = self.peers.remove(&peer) else {
            return;
        };
        for name in &record.joined {
            if let Some(file) = self.files.get_mut(name) {
                file.members.retain(|m| m.id != peer);
                file.push_view(peer, pushes);
            }
        }
        for name in &record.owns {
            let Some(file) = self.files.remove(name) else {
                continue;
            };
            for member in &file.members {
                if let Some(m) = self.peers.get_mut(&member.id) {
                    m.joined.remove(name);
                }
                pushes.push(Push::GroupClosed {
                    to: member.id,
                    name: name.clone(),
                });
            }
        }
    }

    /// Panics if an invariant of the module doc does not hold (tests only).
    #[cfg(test)]
    fn check_invariants(&self) {
        for (name, file) in &self.files {
            let owner = &self.peers[&file.owner.id];
            assert!(owner.owns.contains(name));
            let mut seen = BTreeSet::new();
            for m in &file.members {
                assert_ne!(m.id, file.owner.id);
                assert!(seen.insert(m.id));
                assert!(self.peers[&m.id].joined.contains(name));
            }
        }
        for (id, p) in &self.peers {
            for name in &p.owns {
                assert_eq!(self.files[name].owner.id, *id);
            }
            for name in &p.joined {
                assert!(self.files[name].members.iter().any(|m| m.id == *id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn manifest(name: &str) -> Manifest {
        Manifest::of_bytes(name, &[7u8; 250_000])
    }

    /// A registry with peers 1, 2, 3 and 4; peer 1 shares a.bin.
    fn setup() -> Registry {
        let mut r = Registry::new();
        for port in 4001..=4004 {
            r.connect(addr(port));
        }
        r.register_file(PeerId(1), manifest("a.bin")).unwrap();
        r
    }

    fn snapshot(r: &Registry) -> String {
        format!("{:?}", (&r.peers, &r.files))
    }

    /// Every refusal, table-driven: what is asked, by whom, and the refusal
    /// expected. A refused request must leave the registry unchanged.
    #[test]
    fn refusals_change_nothing() {
        enum Op {
            Register(u64, Manifest),
            Join(u64, &'static str),
            Leave(u64, &'static str),
            Group(u64, &'static str),
        }
        let mut bad = manifest("c.bin");
        bad.chunk_hashes.pop();
        let cases: Vec<(&str, Op, Refusal)> = vec![
            (
                "second owner of a name",
                Op::Register(2, manifest("a.bin")),
                Refusal::AlreadyShared {
                    name: "a.bin".into(),
                    owner: PeerId(1),
                },
            ),
            (
                "owner registers twice",
                Op::Register(1, manifest("a.bin")),
                Refusal::AlreadySharing("a.bin".into()),
            ),
            (
                "inconsistent manifest",
                Op::Register(2, bad),
                Refusal::BadManifest(ManifestError::ChunkCountMismatch {
                    expected: 3,
                    got: 2,
                }),
            ),
            (
                "unknown peer registers",
                Op::Register(99, manifest("b.bin")),
                Refusal::UnknownPeer(PeerId(99)),
            ),
            (
                "owner joins its own group",
                Op::Join(1, "a.bin"),
                Refusal::OwnFile("a.bin".into()),
            ),
            (
                "join an unknown file",
                Op::Join(2, "nope"),
                Refusal::UnknownFile("nope".into()),
            ),
            (
                "join twice",
                Op::Join(3, "a.bin"),
                Refusal::AlreadyMember("a.bin".into()),
            ),
            (
                "unknown peer joins",
                Op::Join(99, "a.bin"),
                Refusal::UnknownPeer(PeerId(99)),
            ),
            (
                "leave a group never joined",
                Op::Leave(2, "a.bin"),
                Refusal::NotMember("a.bin".into()),
            ),
            (
                "owner leaves its own group",
                Op::Leave(1, "a.bin"),
                Refusal::NotMember("a.bin".into()),
            ),
            (
                "leave an unknown file",
                Op::Leave(2, "nope"),
                Refusal::UnknownFile("nope".into()),
            ),
            (
                "outsider fetches a group",
                Op::Group(4, "a.bin"),
                Refusal::NotMember("a.bin".into()),
            ),
            (
                "fetch an unknown group",
                Op::Group(1, "nope"),
                Refusal::UnknownFile("nope".into()),
            ),
        ];
        for (what, op, expected) in cases {
            let mut r = setup();
            r.join_group(PeerId(3), "a.bin", &mut Vec::new()).unwrap();
            let before = snapshot(&r);
            let mut pushes = Vec::new();
            let got = match op {
                Op::Register(p, m) => r.register_file(PeerId(p), m),
                Op::Join(p, n) => r.join_group(PeerId(p), n, &mut pushes).map(|_| ()),
                Op::Leave(p, n) => r.leave_group(PeerId(p), n, &mut pushes),
                Op::Group(p, n) => r.group(PeerId(p), n).map(|_| ()),
            };
            assert_eq!(got, Err(expected.clone()), "{what}");
            assert!(pushes.is_empty(), "{what}: pushed {pushes:?}");
            assert_eq!(snapshot(&r), before, "{what}: state changed");
            assert!(!expected.to_string().is_empty());
            r.check_invariants();
        }
    }

    #[test]
    fn joins_and_leaves_push_to_owner_and_other_members_in_join_order() {
        let mut r = setup();
        let mut pushes = Vec::new();
        let view = r.join_group(PeerId(2), "a.bin", &mut pushes).unwrap();
        assert_eq!(view.owner.udp, addr(4001));
        assert_eq!(view.members.len(), 1);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].to(), PeerId(1));

        pushes.clear();
        let view = r.join_group(PeerId(3), "a.bin", &mut pushes).unwrap();
        let ids: Vec<_> = view.members.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, [2, 3]);
        let told: Vec<_> = pushes.iter().map(|p| p.to().0).collect();
        assert_eq!(told, [1, 2]);
        assert!(pushes
            .iter()
            .all(|p| matches!(p, Push::Group { group, .. } if *group == view)));

        pushes.clear();
        r.leave_group(PeerId(2), "a.bin", &mut pushes).unwrap();
        let told: Vec<_> = pushes.iter().map(|p| p.to().0).collect();
        assert_eq!(told, [1, 3]);
        let Push::Group { group, .. } = &pushes[0] else {
            panic!("expected a group push, got {:?}", pushes[0]);
        };
        assert_eq!(group.members.len(), 1);
        assert_eq!(r.list()[0].group_size, 1);
        assert_eq!(
            r.group(PeerId(1), "a.bin").unwrap(),
            r.group(PeerId(3), "a.bin").unwrap()
        );
        r.check_invariants();
    }

    #[test]
    fn list_shows_each_file_with_owner_and_group_size() {
        let mut r = setup();
        r.register_file(PeerId(2), manifest("b.bin")).unwrap();
        r.join_group(PeerId(3), "b.bin", &mut Vec::new()).unwrap();
        r.join_group(PeerId(4), "b.bin", &mut Vec::new()).unwrap();
        let list = r.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[1],
            FileEntry {
                name: "b.bin".into(),
                size: 250_000,
                chunk_count: 3,
                owner: PeerInfo {
                    id: PeerId(2),
                    udp: addr(4002)
                },
                group_size: 2,
            }
        );
        assert_eq!(list[0].group_size, 0);
    }

    #[test]
    fn member_going_offline_leaves_its_groups() {
        let mut r = setup();
        r.register_file(PeerId(2), manifest("b.bin")).unwrap();
        r.join_group(PeerId(3), "a.bin", &mut Vec::new()).unwrap();
        r.join_group(PeerId(4), "a.bin", &mut Vec::new()).unwrap();
        r.join_group(PeerId(3), "b.bin", &mut Vec::new()).unwrap();
        let mut pushes = Vec::new();
        r.disconnect(PeerId(3), &mut pushes);
        let told: Vec<_> = pushes.iter().map(|p| p.to().0).collect();
        assert_eq!(told, [1, 4, 2]);
        assert_eq!(r.list()[0].group_size, 1);
        assert_eq!(r.list()[1].group_size, 0);
        assert!(!r.is_online(PeerId(3)));
        r.check_invariants();
        // Gone is gone: a second disconnect changes nothing.
        pushes.clear();
        r.disconnect(PeerId(3), &mut pushes);
        assert!(pushes.is_empty());
    }

    #[test]
    fn owner_going_offline_closes_its_groups_and_leaves_list() {
        let mut r = setup();
        r.join_group(PeerId(2), "a.bin", &mut Vec::new()).unwrap();
        r.join_group(PeerId(3), "a.bin", &mut Vec::new()).unwrap();
        let mut pushes = Vec::new();
        r.disconnect(PeerId(1), &mut pushes);
        assert_eq!(
            pushes,
            vec![
                Push::GroupClosed {
                    to: PeerId(2),
                    name: "a.bin".into()
                },
                Push::GroupClosed {
                    to: PeerId(3),
                    name: "a.bin".into()
                },
            ]
        );
        assert!(r.list().is_empty());
        assert_eq!(r.file_count(), 0);
        r.check_invariants();
        // The name is free again; the former members may even share it.
        r.register_file(PeerId(2), manifest("a.bin")).unwrap();
        r.join_group(PeerId(3), "a.bin", &mut Vec::new()).unwrap();
        r.check_invariants();
    }

    #[test]
    fn ids_are_never_reused() {
        let mut r = Registry::new();
        let a = r.connect(addr(1));
        r.disconnect(a, &mut Vec::new());
        let b = r.connect(addr(1));
        assert_ne!(a, b);
        assert_eq!(r.peer_count(), 1);
    }
}
