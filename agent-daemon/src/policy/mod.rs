pub mod compiled;
