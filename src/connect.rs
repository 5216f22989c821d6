//! Connecting to Kubernetes as a [`Config`] says: the constructors of [`KubeStore`] that read a
//! kubeconfig. They live here, above both `config` and `store`, so that the store depends on
//! neither the configuration nor the crate's error type.

use crate::config::Config;
use crate::error::Error;
use crate::store::KubeStore;

impl KubeStore {
    /// Connects as `config` says: the kubeconfig at `kubeconfig_path` (`KUBE_CONFIG_PATH`)
    /// if set, otherwise the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`), otherwise
    /// the in-cluster service account (kube's `Config::infer`).
    pub async fn from_config(config: &Config) -> Result<Self, Error> {
        let client_config = Self::client_config(config).await?;
        Self::from_kube_config(client_config, config.kubeconfig_path.clone())
    }

    /// A store on a client made from `client_config` (custom headers, proxies, TLS). Needs a
    /// tokio runtime, which the client then belongs to. `kubeconfig` only names the file in
    /// errors.
    pub fn from_kube_config(
        client_config: kube::Config,
        kubeconfig: Option<std::path::PathBuf>,
    ) -> Result<Self, Error> {
        let client = kube::Client::try_from(client_config).map_err(|e| Error::KubeConfig {
            path: kubeconfig,
            source: Box::new(e),
        })?;
        Ok(Self::new(client))
    }

    /// The kube client configuration `config` asks for (see [`from_config`](Self::from_config)).
    pub async fn client_config(config: &Config) -> Result<kube::Config, Error> {
        let client_config = match &config.kubeconfig_path {
            Some(path) => {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(path).map_err(|e| Error::KubeConfig {
                        path: Some(path.clone()),
                        source: Box::new(e),
                    })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                    .await
                    .map_err(|e| Error::KubeConfig {
                        path: Some(path.clone()),
                        source: Box::new(e),
                    })?
            }
            None => kube::Config::infer().await.map_err(|e| Error::KubeConfig {
                path: None,
                source: Box::new(e),
            })?,
        };
        Ok(client_config)
    }
}
