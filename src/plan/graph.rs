//! The task graph of a plan: which task waits for which, checked to be a DAG, in the order a
//! scheduler runs it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;

use super::model::TaskSpec;

/// Why a plan's tasks do not form a usable graph.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("duplicate task id {id:?}")]
    DuplicateTask { id: String },
    #[error("task {task:?} depends on unknown task {dependency:?}")]
    UnknownDependency { task: String, dependency: String },
    #[error("task {task:?} depends on itself")]
    SelfDependency { task: String },
    /// `path` starts and ends with the same id; each step reads "depends on".
    #[error("tasks form a cycle: {}", CyclePath(path))]
    Cycle { path: Vec<String> },
}

struct CyclePath<'a>(&'a [String]);

impl fmt::Display for CyclePath<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, id) in self.0.iter().enumerate() {
            if position > 0 {
                formatter.write_str(" -> ")?;
            }
            formatter.write_str(id)?;
        }
        Ok(())
    }
}

/// The tasks of one plan as a directed acyclic graph.
///
/// Ids keep the order of the input; lists of dependencies and dependents keep the order of the
/// input too, so everything derived from the graph is deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskGraph {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// Per task, the ids it depends on, without repeats, in the order its `depends_on` gives.
    dependencies: Vec<Vec<String>>,
    /// Per task, the ids of the tasks that depend on it, in input order.
    dependents: Vec<Vec<String>>,
    /// Indices into `ids`, dependencies first.
    order: Vec<usize>,
}

impl TaskGraph {
    /// Builds the graph, rejecting duplicate ids, unknown or self dependencies, and cycles.
    ///
    /// A cycle is named starting from the smallest id on it (by byte order), following
    /// dependencies, so the same plan always yields the same message.
    pub fn new(tasks: &[TaskSpec]) -> Result<TaskGraph, GraphError> {
        let mut index = HashMap::with_capacity(tasks.len());
        for (position, task) in tasks.iter().enumerate() {
            if index.insert(task.id.clone(), position).is_some() {
                return Err(GraphError::DuplicateTask {
                    id: task.id.clone(),
                });
            }
        }

        let mut dependencies = Vec::with_capacity(tasks.len());
        let mut dependents = vec![Vec::new(); tasks.len()];
        for (position, task) in tasks.iter().enumerate() {
            let mut seen = HashSet::new();
            let mut own = Vec::with_capacity(task.depends_on.len());
            for dependency in &task.depends_on {
                if *dependency == task.id {
                    return Err(GraphError::SelfDependency {
                        task: task.id.clone(),
                    });
                }
                let Some(&target) = index.get(dependency) else {
                    return Err(GraphError::UnknownDependency {
                        task: task.id.clone(),
                        dependency: dependency.clone(),
                    });
                };
                if seen.insert(target) {
                    own.push(dependency.clone());
                    dependents[target].push(position);
                }
            }
            dependencies.push(own);
        }
        // Dependents were pushed while walking tasks in input order, so each list is sorted.
        let dependents: Vec<Vec<String>> = dependents
            .into_iter()
            .map(|list| list.into_iter().map(|at| tasks[at].id.clone()).collect())
            .collect();

        let mut graph = TaskGraph {
            ids: tasks.iter().map(|task| task.id.clone()).collect(),
            index,
            dependencies,
            dependents,
            order: Vec::new(),
        };
        graph.order = graph.sort()?;
        Ok(graph)
    }

    /// How many tasks the graph has.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether a task with this id is in the graph.
    pub fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    /// Every task id, in input order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The ids `id` depends on, in the order its `depends_on` lists them (repeats removed);
    /// empty for an id that is not in the graph.
    pub fn dependencies(&self, id: &str) -> &[String] {
        self.index
            .get(id)
            .map_or(&[], |&at| self.dependencies[at].as_slice())
    }

    /// The ids that depend on `id`, in input order; empty for an id that is not in the graph.
    pub fn dependents(&self, id: &str) -> &[String] {
        self.index
            .get(id)
            .map_or(&[], |&at| self.dependents[at].as_slice())
    }

    /// The tasks with no dependencies, in input order: the ones that can start at once.
    pub fn roots(&self) -> Vec<&str> {
        self.ids
            .iter()
            .zip(&self.dependencies)
            .filter(|(_, dependencies)| dependencies.is_empty())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Every task id, each after all of its dependencies. Among the tasks that are ready at
    /// any point, the one that comes first in the input goes first, so an input that is
    /// already in dependency order comes back unchanged.
    pub fn topological_order(&self) -> Vec<String> {
        self.order.iter().map(|&at| self.ids[at].clone()).collect()
    }

    /// Kahn's algorithm with the ready set ordered by input position.
    fn sort(&self) -> Result<Vec<usize>, GraphError> {
        let mut waiting_on: Vec<usize> = self.dependencies.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = waiting_on
            .iter()
            .enumerate()
            .filter(|(_, count)| **count == 0)
            .map(|(at, _)| Reverse(at))
            .collect();
        let mut order = Vec::with_capacity(self.ids.len());
        while let Some(Reverse(at)) = ready.pop() {
            order.push(at);
            for dependent in &self.dependents[at] {
                let dependent = self.index[dependent];
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.push(Reverse(dependent));
                }
            }
        }
        if order.len() == self.ids.len() {
            Ok(order)
        } else {
            let stuck: HashSet<usize> = (0..self.ids.len())
                .filter(|at| waiting_on[*at] > 0)
                .collect();
            Err(GraphError::Cycle {
                path: self.find_cycle(&stuck),
            })
        }
    }

    /// Names one cycle among `stuck`, the tasks Kahn's algorithm could not order.
    ///
    /// A stuck task is on a cycle or depends on one. Trying them by id, the first one that
    /// can reach itself is the smallest id on any cycle; a breadth-first search from it gives
    /// the shortest cycle through it, visiting dependencies in their listed order.
    fn find_cycle(&self, stuck: &HashSet<usize>) -> Vec<String> {
        let mut candidates: Vec<usize> = stuck.iter().copied().collect();
        candidates.sort_by(|a, b| self.ids[*a].cmp(&self.ids[*b]));
        for start in candidates {
            if let Some(cycle) = self.shortest_cycle_through(start, stuck) {
                return cycle.into_iter().map(|at| self.ids[at].clone()).collect();
            }
        }
        unreachable!("tasks that a topological sort cannot order always include a cycle")
    }

    fn shortest_cycle_through(&self, start: usize, within: &HashSet<usize>) -> Option<Vec<usize>> {
        let mut came_from: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(at) = queue.pop_front() {
            for dependency in &self.dependencies[at] {
                let next = self.index[dependency];
                if next == start {
                    let mut path = vec![start];
                    let mut step = at;
                    while step != start {
                        path.push(step);
                        step = came_from[&step];
                    }
                    // `path` is now [first step, .., at, start] backwards.
                    path.reverse();
                    path.rotate_right(1);
                    path.push(start);
                    return Some(path);
                }
                if within.contains(&next) && !came_from.contains_key(&next) {
                    came_from.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, depends_on: &[&str]) -> TaskSpec {
        TaskSpec {
            id: id.to_owned(),
            prompt: format!("do {id}"),
            depends_on: depends_on.iter().map(|dep| (*dep).to_owned()).collect(),
            ..TaskSpec::default()
        }
    }

    fn error(tasks: &[TaskSpec]) -> String {
        TaskGraph::new(tasks)
            .expect_err("invalid graph")
            .to_string()
    }

    #[test]
    fn a_diamond_runs_the_top_first_and_the_bottom_last() {
        let graph = TaskGraph::new(&[
            task("top", &[]),
            task("left", &["top"]),
            task("right", &["top"]),
            task("bottom", &["left", "right"]),
        ])
        .expect("a DAG");
        assert_eq!(graph.len(), 4);
        assert_eq!(graph.roots(), ["top"]);
        assert_eq!(graph.dependencies("bottom"), ["left", "right"]);
        assert_eq!(graph.dependents("top"), ["left", "right"]);
        assert_eq!(graph.dependents("bottom"), [] as [String; 0]);
        assert_eq!(
            graph.topological_order(),
            ["top", "left", "right", "bottom"]
        );
    }

    #[test]
    fn a_chain_given_backwards_comes_out_in_dependency_order() {
        let graph =
            TaskGraph::new(&[task("c", &["b"]), task("b", &["a"]), task("a", &[])]).expect("a DAG");
        assert_eq!(graph.ids(), ["c", "b", "a"]);
        assert_eq!(graph.roots(), ["a"]);
        assert_eq!(graph.topological_order(), ["a", "b", "c"]);
    }

    #[test]
    fn independent_tasks_keep_their_input_order() {
        let graph =
            TaskGraph::new(&[task("z", &[]), task("m", &[]), task("a", &[])]).expect("a DAG");
        assert_eq!(graph.roots(), ["z", "m", "a"]);
        assert_eq!(graph.topological_order(), ["z", "m", "a"]);
    }

    #[test]
    fn a_task_that_becomes_ready_early_runs_before_later_input() {
        let graph =
            TaskGraph::new(&[task("c", &["a"]), task("a", &[]), task("b", &[])]).expect("a DAG");
        assert_eq!(graph.topological_order(), ["a", "c", "b"]);
    }

    #[test]
    fn an_empty_task_list_is_an_empty_graph() {
        let graph = TaskGraph::new(&[]).expect("a DAG");
        assert!(graph.is_empty());
        assert!(graph.topological_order().is_empty());
        assert_eq!(graph.dependencies("nope"), [] as [String; 0]);
    }

    #[test]
    fn repeated_dependencies_count_once() {
        let graph = TaskGraph::new(&[task("a", &[]), task("b", &["a", "a"])]).expect("a DAG");
        assert_eq!(graph.dependencies("b"), ["a"]);
        assert_eq!(graph.dependents("a"), ["b"]);
    }

    #[test]
    fn a_duplicate_task_id_is_named() {
        assert_eq!(
            error(&[task("a", &[]), task("b", &[]), task("a", &[])]),
            r#"duplicate task id "a""#
        );
    }

    #[test]
    fn an_unknown_dependency_is_named_with_its_task() {
        assert_eq!(
            error(&[task("a", &[]), task("b", &["a", "x"])]),
            r#"task "b" depends on unknown task "x""#
        );
    }

    #[test]
    fn a_task_that_depends_on_itself_is_rejected() {
        assert_eq!(error(&[task("a", &["a"])]), r#"task "a" depends on itself"#);
    }

    #[test]
    fn a_cycle_is_named_from_its_smallest_id() {
        assert_eq!(
            error(&[
                task("c", &["a"]),
                task("b", &["c"]),
                task("a", &["b"]),
                task("d", &[])
            ]),
            "tasks form a cycle: a -> b -> c -> a"
        );
    }

    #[test]
    fn a_two_task_cycle_is_named() {
        assert_eq!(
            error(&[task("y", &["x"]), task("x", &["y"])]),
            "tasks form a cycle: x -> y -> x"
        );
    }

    #[test]
    fn a_task_between_two_cycles_is_not_reported_as_a_cycle() {
        // "a" depends on the cycle c <-> d and the cycle e <-> f depends on "a"; "a" sorts
        // first but is on no cycle.
        assert_eq!(
            error(&[
                task("a", &["c"]),
                task("c", &["d"]),
                task("d", &["c"]),
                task("e", &["f", "a"]),
                task("f", &["e"]),
            ]),
            "tasks form a cycle: c -> d -> c"
        );
    }

    #[test]
    fn the_shortest_cycle_through_the_smallest_id_is_named() {
        assert_eq!(
            error(&[
                task("a", &["b", "c"]),
                task("b", &["d"]),
                task("d", &["a"]),
                task("c", &["a"]),
            ]),
            "tasks form a cycle: a -> c -> a"
        );
    }
}
