//! Which files a folder run visits: `*.yaml`/`*.yml` regular files, hidden entries and
//! symbolic links left out, minus the paths a `.strongroomignore` file in the folder or an
//! `--exclude` pattern names (gitignore-style patterns).

use std::path::{Path, PathBuf};

/// The name of the file, in the folder a run starts from, whose lines name paths to skip.
pub const IGNORE_FILE: &str = ".strongroomignore";

/// The YAML files at `path`: the file itself, or the `*.yaml`/`*.yml` files of a folder
/// (and of its subfolders with `recursive`), sorted. See [`yaml_files_excluding`] for what
/// a folder run leaves out.
pub fn yaml_files(path: &Path, recursive: bool) -> std::io::Result<Vec<PathBuf>> {
    yaml_files_excluding(path, recursive, &[])
}

/// The YAML files at `path`, as [`yaml_files`], leaving out in a folder: entries whose
/// name starts with `.` (`.git`, `.github`, `.gitlab-ci.yml`), symbolic links, and the
/// paths matched by the patterns of a [`IGNORE_FILE`] in `path` or by `exclude`
/// ([`yaml_walk`] also lists the links it passed over).
///
/// Patterns are gitignore-style, relative to `path`: `*` and `?` match within a name,
/// `[a-z]` a character class, `**` any number of folders; a pattern without a `/` matches
/// a name at any depth, one with a `/` matches from `path`; a trailing `/` matches folders
/// only; `!` re-includes; the last matching pattern wins (`exclude` after the file's); a
/// skipped folder is not entered. A file named as `path` itself is always visited.
pub fn yaml_files_excluding(
    path: &Path,
    recursive: bool,
    exclude: &[String],
) -> std::io::Result<Vec<PathBuf>> {
    yaml_walk(path, recursive, exclude).map(|walk| walk.files)
}

/// What a folder run visits, and the symbolic links it passed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct YamlWalk {
    /// The files to visit, sorted.
    pub files: Vec<PathBuf>,
    /// Symbolic links a folder run does not follow, sorted: those named `*.yaml`/`*.yml`,
    /// and (with `recursive`) links to folders. Hidden and excluded entries are not listed
    /// (they are left out on purpose); these are, so that nothing is skipped without a word.
    pub skipped_links: Vec<PathBuf>,
}

/// The YAML files at `path`, as [`yaml_files_excluding`], with the symbolic links the walk
/// passed over ([`YamlWalk::skipped_links`]). A link named as `path` itself is followed.
pub fn yaml_walk(path: &Path, recursive: bool, exclude: &[String]) -> std::io::Result<YamlWalk> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(YamlWalk {
            files: vec![path.to_path_buf()],
            skipped_links: Vec::new(),
        });
    }
    let mut rules = Vec::new();
    match std::fs::read_to_string(path.join(IGNORE_FILE)) {
        Ok(text) => rules.extend(text.lines().filter_map(Rule::parse)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rules.extend(exclude.iter().filter_map(|p| Rule::parse(p)));
    let mut out = Vec::new();
    let mut links = Vec::new();
    let mut dirs = vec![(path.to_path_buf(), Vec::<String>::new())];
    while let Some((dir, rel)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let ft = entry.file_type()?;
            let mut segs = rel.clone();
            segs.push(name);
            let is_dir = ft.is_dir();
            if excluded(&rules, &segs, is_dir) {
                continue;
            }
            let p = entry.path();
            if ft.is_symlink() {
                let yaml_name = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
                if yaml_name || (recursive && p.is_dir()) {
                    links.push(p);
                }
                continue;
            }
            if is_dir {
                if recursive {
                    dirs.push((p, segs));
                }
            } else if ft.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    links.sort();
    Ok(YamlWalk {
        files: out,
        skipped_links: links,
    })
}

fn excluded(rules: &[Rule], segs: &[String], is_dir: bool) -> bool {
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    rules
        .iter()
        .rev()
        .find(|r| r.matches(&segs, is_dir))
        .is_some_and(|r| !r.negate)
}

/// One pattern line.
#[derive(Debug)]
struct Rule {
    negate: bool,
    dir_only: bool,
    /// The pattern's names, `**` among them.
    segs: Vec<String>,
}

impl Rule {
    fn parse(line: &str) -> Option<Rule> {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (negate, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (dir_only, line) = match line.strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let anchored = line.contains('/');
        let line = line.trim_start_matches('/');
        if line.is_empty() {
            return None;
        }
        let mut segs: Vec<String> = Vec::new();
        if !anchored {
            segs.push("**".into());
        }
        segs.extend(
            line.split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string),
        );
        Some(Rule {
            negate,
            dir_only,
            segs,
        })
    }

    fn matches(&self, path: &[&str], is_dir: bool) -> bool {
        (is_dir || !self.dir_only) && match_segs(&self.segs, path)
    }
}

fn match_segs(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => (0..=path.len()).any(|i| match_segs(rest, &path[i..])),
        Some((p, rest)) => {
            path.first().is_some_and(|name| match_name(p, name)) && match_segs(rest, &path[1..])
        }
    }
}

/// One element of a name pattern.
enum Tok {
    Star,
    Any,
    Class(Vec<(char, char)>, bool),
    Lit(char),
}

fn tokens(pattern: &str) -> Vec<Tok> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' => {
                if !matches!(out.last(), Some(Tok::Star)) {
                    out.push(Tok::Star);
                }
            }
            '?' => out.push(Tok::Any),
            '\\' if i + 1 < chars.len() => {
                i += 1;
                out.push(Tok::Lit(chars[i]));
            }
            '[' => {
                let mut j = i + 1;
                let negated = matches!(chars.get(j), Some('!' | '^'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                while j < chars.len() && (first || chars[j] != ']') {
                    first = false;
                    let lo = chars[j];
                    if chars.get(j + 1) == Some(&'-') && chars.get(j + 2).is_some_and(|c| *c != ']')
                    {
                        ranges.push((lo, chars[j + 2]));
                        j += 3;
                    } else {
                        ranges.push((lo, lo));
                        j += 1;
                    }
                }
                if j < chars.len() {
                    out.push(Tok::Class(ranges, negated));
                    i = j;
                } else {
                    out.push(Tok::Lit('['));
                }
            }
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    out
}

/// A name against a pattern, `*` by the usual two-pointer backtracking (no blow-up).
fn match_name(pattern: &str, name: &str) -> bool {
    let toks = tokens(pattern);
    let name: Vec<char> = name.chars().collect();
    let one = |t: &Tok, c: char| match t {
        Tok::Any => true,
        Tok::Lit(l) => *l == c,
        Tok::Class(ranges, negated) => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
        Tok::Star => false,
    };
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if t < toks.len() && matches!(toks[t], Tok::Star) {
            star = Some((t, n));
            t += 1;
        } else if t < toks.len() && one(&toks[t], name[n]) {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    toks[t..].iter().all(|t| matches!(t, Tok::Star))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(pattern: &str, path: &str, is_dir: bool) -> bool {
        let rule = Rule::parse(pattern).expect("rule");
        let segs: Vec<&str> = path.split('/').collect();
        rule.matches(&segs, is_dir)
    }

    #[test]
    fn patterns_match_like_gitignore() {
        assert!(hit("*.yml", "ci.yml", false));
        assert!(hit("*.yml", "a/b/ci.yml", false));
        assert!(!hit("*.yml", "a/ci.yaml", false));
        assert!(hit("workflows/", "x/workflows", true));
        assert!(!hit("workflows/", "x/workflows", false));
        assert!(hit("/charts", "charts", true));
        assert!(!hit("/charts", "a/charts", true));
        assert!(hit("apps/*/values.yaml", "apps/web/values.yaml", false));
        assert!(!hit("apps/*/values.yaml", "apps/web/x/values.yaml", false));
        assert!(hit("apps/**/values.yaml", "apps/web/x/values.yaml", false));
        assert!(hit("apps/**/values.yaml", "apps/values.yaml", false));
        assert!(hit("k8s-[0-9].yaml", "k8s-3.yaml", false));
        assert!(!hit("k8s-[!0-9].yaml", "k8s-3.yaml", false));
        assert!(hit("a?c.yaml", "abc.yaml", false));
        assert!(hit("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", false));
        assert!(!hit("*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false));
        let rules: Vec<Rule> = ["*.yaml", "!keep.yaml"]
            .iter()
            .filter_map(|l| Rule::parse(l))
            .collect();
        assert!(excluded(&rules, &["x.yaml".into()], false));
        assert!(!excluded(&rules, &["keep.yaml".into()], false));
        assert!(Rule::parse("# comment").is_none());
        assert!(Rule::parse("   ").is_none());
    }
}
