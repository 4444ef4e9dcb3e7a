//! The users in memory, for the tests of the rules and of the command flow.

use std::cell::Cell;
use std::collections::HashMap;

use super::Users;
use crate::codes::LookupKey;
use crate::events::Event;
use crate::store::{code_entry, Change, StoreError};
use crate::users::{names_equal, Credential, User};

/// The users in memory: what the rules read, and where a decided change lands.
#[derive(Default)]
pub struct FakeUsers {
    pub users: Vec<User>,
    pub codes: HashMap<LookupKey, (String, Credential)>,
    pub events: Vec<Event>,
    pub next_id: Cell<u32>,
}

impl FakeUsers {
    pub fn commit(&mut self, change: Change) {
        self.users.retain(|u| !change.delete_users.contains(&u.id));
        for user in change.put_users {
            self.users.retain(|u| u.id != user.id);
            self.users.push(user);
        }
        for key in &change.delete_codes {
            self.codes.remove(key);
        }
        for (key, entry) in change.put_codes {
            let holder = self
                .users
                .iter()
                .find_map(|u| {
                    [Credential::Code, Credential::Duress, Credential::Tag]
                        .into_iter()
                        .find(|which| code_entry(&u.id, *which) == entry)
                        .map(|which| (u.id.clone(), which))
                })
                .expect("a code entry names a user of the same change");
            self.codes.insert(key, holder);
        }
        self.events.extend(change.events);
    }

    pub fn get(&self, name: &str) -> &User {
        self.users.iter().find(|u| u.name == name).unwrap()
    }
}

impl Users for FakeUsers {
    fn find_user(&self, id_or_name: &str) -> Result<Option<User>, StoreError> {
        let by_id = self.users.iter().find(|u| u.id == id_or_name);
        let by_name = || {
            self.users
                .iter()
                .find(|u| names_equal(&u.name, id_or_name.trim()))
        };
        Ok(by_id.or_else(by_name).cloned())
    }

    fn users(&self) -> Result<Vec<User>, StoreError> {
        Ok(self.users.clone())
    }

    fn credential_by_key(&self, key: &LookupKey) -> Result<Option<(User, Credential)>, StoreError> {
        Ok(self.codes.get(key).map(|(id, which)| {
            let user = self.users.iter().find(|u| &u.id == id).unwrap();
            (user.clone(), *which)
        }))
    }

    fn new_user_id(&self) -> Result<String, StoreError> {
        self.next_id.set(self.next_id.get() + 1);
        Ok(format!("u_{:06}", self.next_id.get()))
    }

    fn activity(
        &self,
        limit: usize,
        before: Option<u64>,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<Vec<Event>, StoreError> {
        let before = before.unwrap_or(u64::MAX);
        Ok(self
            .events
            .iter()
            .enumerate()
            .rev()
            .filter(|(i, e)| (*i as u64 + 1) < before && keep(e))
            .map(|(_, e)| e.clone())
            .take(limit)
            .collect())
    }
}
